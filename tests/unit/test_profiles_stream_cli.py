"""``cytoscreen profiles select|consensus`` with profiles.streaming: the streamed outputs equal the
in-memory ones, ``auto`` streams above the row threshold, ``always`` refuses what cannot stream."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.io.stream import plate_tables


def _plates(tmp_path, n_plates=5, wells=48, n_feat=30, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for p in range(n_plates):
        z = rng.normal(size=(wells, 6))
        x = z @ rng.normal(size=(6, n_feat)) + 0.3 * rng.normal(size=(wells, n_feat)) + 0.2 * p
        x[:, 1] = x[:, 0] * 2 + 0.01 * rng.normal(size=wells)  # correlated pair
        x[:, 2] = np.round(x[:, 2] > 1.5)  # few distinct values: frequency rule
        x[3, 3] = 1e4  # an outlier
        df = pd.DataFrame(x.astype(np.float32), columns=[f"f{j:02d}" for j in range(n_feat)])
        df.insert(0, io.PLATE, f"P{p}")
        df.insert(1, io.WELL, [f"A{w + 1:02d}" for w in range(wells)])
        df.insert(2, io.PERT_TYPE, ["negcon" if w < 8 else "trt" for w in range(wells)])
        df.insert(3, io.PERTURBATION, ["DMSO" if w < 8 else f"c{(w + p) % 12}" for w in range(wells)])
        df.insert(4, io.CONCENTRATION, [0.0 if w < 8 else float(1 + w % 3) for w in range(wells)])
        path = tmp_path / "in" / f"P{p}" / "normalized.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_parquet(df, path)
        paths.append(str(path))
    return paths


def _config(tmp_path, name, **profiles):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"profiles": profiles}))
    return str(path)


def _run(tmp_path, paths, mode, **extra):
    cfg = _config(tmp_path, mode, streaming=mode, **extra)
    out = tmp_path / mode
    assert main(["profiles", "select", *paths, str(out / "feature_selected.parquet"), "--config", cfg,
                 "--per-plate-dir", str(out / "plates"), "--untransformed",
                 str(out / "untransformed.parquet")]) == 0
    assert main(["profiles", "consensus", str(out / "feature_selected.parquet"),
                 str(out / "consensus.parquet"), "--config", cfg]) == 0
    return out


def _equal(a, b):
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=False,
                                  rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["median", "modz"])
def test_streamed_select_and_consensus_equal_in_memory(tmp_path, monkeypatch, method):
    import cytoscreen.profiles.stream_stage as stream_stage

    monkeypatch.setattr(stream_stage, "BUCKET_ROWS", 40)  # 240 rows: 6 buckets
    monkeypatch.setattr(stream_stage, "_BATCH_ROWS", 25)  # batches across plates
    paths = _plates(tmp_path)
    never = _run(tmp_path, paths, "never", consensus_method=method)
    always = _run(tmp_path, paths, "always", consensus_method=method)
    prov = io.read_provenance(always / "feature_selected.parquet")
    assert prov["parameters"]["streamed"] is True
    assert "streamed" not in io.read_provenance(never / "feature_selected.parquet")["parameters"]
    for name in ("feature_selected.parquet", "untransformed.parquet", "consensus.parquet",
                 *(f"plates/P{p}/feature_selected.parquet" for p in range(5))):
        _equal(always / name, never / name)
    rec_a = json.loads((always / "feature_selected.selection.json").read_text())
    rec_n = json.loads((never / "feature_selected.selection.json").read_text())
    assert rec_a["kept"] == rec_n["kept"] and "f03" not in rec_a["kept"]
    assert len(rec_a["kept"]) < 30  # the rules dropped something
    assert (always / "feature_selected.selection.tsv").read_text() == (
        never / "feature_selected.selection.tsv").read_text()
    cons = pd.read_parquet(always / "consensus.parquet")
    assert len(cons) == 37 and cons[io.N_WELLS].sum() == 240  # DMSO and 12 compounds x 3 doses
    # the streamed screen table keeps each plate's rows together: novelty reads it plate by plate
    assert [p for p, _ in plate_tables(always / "feature_selected.parquet", batch_rows=10)] == [
        f"P{p}" for p in range(5)]


def test_auto_streams_above_the_row_threshold(tmp_path, monkeypatch):
    import cytoscreen.io.stream as stream

    paths = _plates(tmp_path, n_plates=3)
    monkeypatch.setattr(stream, "STREAM_ABOVE_ROWS", 100)  # 144 rows
    cfg = _config(tmp_path, "auto", streaming="auto")
    assert main(["profiles", "select", *paths, str(tmp_path / "a.parquet"), "--config", cfg]) == 0
    assert io.read_provenance(tmp_path / "a.parquet")["parameters"]["streamed"] is True
    monkeypatch.setattr(stream, "STREAM_ABOVE_ROWS", 1000)
    assert main(["profiles", "select", *paths, str(tmp_path / "b.parquet"), "--config", cfg]) == 0
    assert "streamed" not in io.read_provenance(tmp_path / "b.parquet")["parameters"]
    _equal(tmp_path / "a.parquet", tmp_path / "b.parquet")
    # auto keeps what cannot stream (a screen-fitted transform) in memory
    monkeypatch.setattr(stream, "STREAM_ABOVE_ROWS", 100)
    cfg = _config(tmp_path, "auto_asinh", streaming="auto", asinh=True)
    assert main(["profiles", "select", *paths, str(tmp_path / "c.parquet"), "--config", cfg]) == 0
    assert "streamed" not in io.read_provenance(tmp_path / "c.parquet")["parameters"]


def test_always_refuses_what_cannot_stream(tmp_path, capsys):
    paths = _plates(tmp_path, n_plates=2)
    cfg = _config(tmp_path, "always", streaming="always", spherize="ZCA")
    rc = main(["profiles", "select", *paths, str(tmp_path / "s.parquet"), "--config", cfg])
    assert rc == 3
    assert "cannot be streamed with the screen-fitted transform(s) spherize" in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()


def test_streamed_per_plate_dir_refuses_a_plate_split_over_inputs(tmp_path, capsys):
    paths = _plates(tmp_path, n_plates=2)
    df = pd.read_parquet(paths[0])
    io.write_parquet(df.iloc[:20], tmp_path / "a.parquet")
    io.write_parquet(df.iloc[20:], tmp_path / "b.parquet")
    cfg = _config(tmp_path, "always", streaming="always")
    rc = main(["profiles", "select", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"),
               str(tmp_path / "s.parquet"), "--config", cfg, "--per-plate-dir", str(tmp_path / "pp")])
    assert rc != 0 and "plate P0 is in an earlier input too" in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()
