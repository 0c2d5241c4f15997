# Bookkeeping: config validation (defaults come from the schema), the plate table, path helpers.

from pathlib import Path

from snakemake.utils import validate

from cytoscreen.config import load_plates, write_resolved_config


validate(config, "../schemas/config.schema.yaml")

# All rules run the same cytoscreen package. With --use-conda, this one environment (relative to
# workflow/rules/) is built once and shared by all rules.
CONDA_ENV = "../../environment.yml"

RESULTS = config["results"]
REPORTS = config["reports"]
PLATE_TABLE = load_plates(config["plates"])
PLATES = list(PLATE_TABLE.index)
# The validated config, passed to every cytoscreen call so a stage sees what Snakemake validated.
CONFIGFILE = write_resolved_config(config, f"{RESULTS}/.config/config.yaml")


def plate_platemap(wildcards):
    """The platemap TSV of a plate (an input, so editing it re-runs the plate's ingest)."""
    return PLATE_TABLE.loc[wildcards.plate, "platemap"]


def results_root(wildcards, output):
    """The results root, derived from a screen-level output (<results>/screen/<file>)."""
    return str(Path(output[0]).parents[1])


def all_outputs():
    """Every stage's final outputs: the lists named <STAGE>_OUTPUTS in the rule files."""
    outputs = []
    for name in STAGE_OUTPUT_LISTS:
        outputs.extend(globals().get(name, []))
    return outputs


STAGE_OUTPUT_LISTS = (
    "INGEST_OUTPUTS",
    "FEATURES_OUTPUTS",
    "SEGMENT_OUTPUTS",
    "PROFILES_OUTPUTS",
    "NOVELTY_OUTPUTS",
    "MOA_OUTPUTS",
    "REPORT_OUTPUTS",
)
