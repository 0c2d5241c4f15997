"""``test_tiny``: a three-layer random-weight network that keeps backbone unit tests to seconds.

Its weights are drawn from a seeded generator, identical in every process; its features mean
nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from cytoscreen.backbones.registry import register_backbone
from cytoscreen.backbones.spec import BackboneSpec
from cytoscreen.backbones.weights import load_weights

TINY_SEED = 0


class _TinyTrunk(nn.Module):
    """Three strided 3x3 convolutions with ReLU; random weights drawn from a seeded generator."""

    def __init__(self, seed: int = TINY_SEED) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 8
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.conv1(x))
        mid = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(mid))
        return x.mean(dim=(2, 3)), mid.mean(dim=(2, 3))


@register_backbone(embedding_dim=16, intermediate_dim=16, input_px=32,
                   weights_source=f"random (seed {TINY_SEED}; for tests only)")
def test_tiny(spec: BackboneSpec, weights: str | None) -> nn.Module:
    trunk = _TinyTrunk()
    if weights is not None:
        load_weights(trunk, weights, name=spec.name)
    return trunk
