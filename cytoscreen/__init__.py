"""cytoscreen: high-content screening from plate images to profiles, hits and MoA clusters."""

__version__ = "0.1.0"
