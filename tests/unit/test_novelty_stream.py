"""Novelty scoring streamed plate by plate equals the in-memory scoring (library and CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import InputDataError
from cytoscreen.io import NOVELTY_HIT, NOVELTY_POSCON_Z, NOVELTY_QVALUE, PERT_TYPE, PLATE, SITE
from cytoscreen.io.stream import ParquetStream, plate_tables, plates_contiguous
from cytoscreen.novelty.data import crossfit_folds
from cytoscreen.novelty.model import CrossFitModel, NoveltyAutoencoder
from cytoscreen.novelty.score import score_profiles
from cytoscreen.novelty.stream import score_plates
from tests.fixtures.novelty import synthetic_wells

torch.set_num_threads(1)


def _screen(n_plates: int = 4, seed: int = 3) -> pd.DataFrame:
    df = synthetic_wells(n_plates=n_plates, shift=4.0, seed=seed)
    trt = df.index[df[PERT_TYPE] == "trt"]
    df.loc[trt[::9], PERT_TYPE] = "poscon"  # a few poscon wells per plate: the poscon readout
    df.loc[trt[5::31], PERT_TYPE] = "empty"
    return df


def _untrained(df: pd.DataFrame, folds: int = 3) -> CrossFitModel:
    feats = [c for c in df.columns if c.startswith("DNA_")]
    models = []
    for k in range(folds):
        torch.manual_seed(10 + k)
        models.append(NoveltyAutoencoder(feats, hidden_sizes=[8], latent_size=2).eval())
    return CrossFitModel(models=tuple(models), folds=crossfit_folds(df, folds=folds, seed=1),
                         features=tuple(feats))


def _assert_frames_close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x):
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-6, atol=1e-6,
                                       equal_nan=True, err_msg=col)
        else:
            assert x.astype(str).tolist() == y.astype(str).tolist(), col


@pytest.mark.parametrize("pvalue", ["conformal", "gaussian"])
def test_streamed_scores_equal_the_in_memory_scores(pvalue, tmp_path):
    df = _screen()
    crossfit = _untrained(df)
    whole = score_profiles(df, crossfit, pvalue=pvalue, hit_q=0.2)
    with ParquetStream(tmp_path / "residuals.parquet") as out:
        streamed = score_plates(((p, rows.reset_index(drop=True)) for p, rows in
                                 df.groupby(PLATE, sort=False)), crossfit, residuals=out.write,
                                pvalue=pvalue, hit_q=0.2)
    assert streamed.pvalue_method == whole.pvalue_method == pvalue
    assert (streamed.n_controls, streamed.n_tested, streamed.n_hits) == (
        whole.n_controls, whole.n_tested, whole.n_hits)
    assert whole.n_hits > 0 and whole.novelty[NOVELTY_POSCON_Z].notna().any()
    _assert_frames_close(streamed.novelty, whole.novelty)
    # the q-values are over every tested well of the screen, not per plate
    per_plate = score_profiles(df[df[PLATE] == "P1"].reset_index(drop=True), crossfit, pvalue=pvalue)
    assert not np.allclose(per_plate.novelty[NOVELTY_QVALUE].fillna(-1),
                           whole.novelty.loc[whole.novelty[PLATE] == "P1", NOVELTY_QVALUE].fillna(-1))
    assert streamed.zprime == pytest.approx(whole.zprime, nan_ok=True)
    assert out.rows == len(df) and len(streamed.residuals) == 0
    _assert_frames_close(pd.read_parquet(tmp_path / "residuals.parquet"), whole.residuals)
    assert (streamed.novelty[NOVELTY_HIT] == whole.novelty[NOVELTY_HIT]).all()


def test_site_level_tables_stream_too():
    df = _screen(n_plates=3)
    sites = pd.concat([df.assign(**{SITE: s}) for s in (1, 2)], ignore_index=True)
    feats = [c for c in df.columns if c.startswith("DNA_")]
    sites.loc[sites[SITE] == 2, feats] += 0.1
    sites = sites.sort_values([PLATE, "Metadata_Well", SITE], kind="stable", ignore_index=True)
    crossfit = _untrained(df)
    whole = score_profiles(sites, crossfit)
    streamed = score_plates(((p, r.reset_index(drop=True)) for p, r in sites.groupby(PLATE, sort=False)),
                            crossfit)
    _assert_frames_close(streamed.novelty, whole.novelty)


def test_plate_tables_reads_each_plate_once_and_refuses_split_plates(tmp_path):
    df = _screen(n_plates=3)
    io.write_parquet(df, tmp_path / "wells.parquet")
    got = list(plate_tables(tmp_path / "wells.parquet", batch_rows=7))  # plates span batches
    assert [p for p, _ in got] == ["P1", "P2", "P3"]
    pd.testing.assert_frame_equal(pd.concat([t for _, t in got], ignore_index=True), df)
    assert plates_contiguous(tmp_path / "wells.parquet")
    mixed = pd.concat([df.iloc[:10], df.iloc[200:], df.iloc[10:200]], ignore_index=True)
    io.write_parquet(mixed, tmp_path / "mixed.parquet")
    assert not plates_contiguous(tmp_path / "mixed.parquet")
    with pytest.raises(InputDataError, match="rows of plate P1 are not together"):
        list(plate_tables(tmp_path / "mixed.parquet", batch_rows=64))
    # a plate given twice to score_plates is refused too
    crossfit = _untrained(df)
    with pytest.raises(InputDataError, match="came in an earlier table"):
        score_plates([("a", df.iloc[:50]), ("b", df.iloc[50:])], crossfit)


def test_parquet_stream_is_atomic(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError), ParquetStream(target) as out:
        out.write(pd.DataFrame({"Metadata_Plate": ["P1"], "x": [1.0]}))
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_cli_streamed_score_equals_the_in_memory_score(tmp_path):
    wells = _screen(n_plates=4, seed=5)
    table = tmp_path / "feature_selected.parquet"
    io.write_parquet(wells, table)
    cfg = {"novelty": {"trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 3}}}
    outs = {}
    for mode in ("never", "always"):
        cfg["novelty"]["streaming"] = mode
        (tmp_path / f"{mode}.yaml").write_text(yaml.safe_dump(cfg))
        # training reads only the control rows, plate by plate, when streamed: the same models
        assert main(["novelty", "train", str(table), "--config", str(tmp_path / f"{mode}.yaml"),
                     "--out", str(tmp_path / f"{mode}.ckpt"), "--threads", "1"]) == 0
        assert main(["novelty", "score", str(table), "--checkpoint", str(tmp_path / "never.ckpt"),
                     "--config", str(tmp_path / f"{mode}.yaml"), "--out",
                     str(tmp_path / f"{mode}_novelty.parquet"), "--residuals",
                     str(tmp_path / f"{mode}_residuals.parquet")]) == 0
        outs[mode] = {k: pd.read_parquet(tmp_path / f"{mode}_{k}.parquet") for k in ("novelty", "residuals")}
    _assert_frames_close(outs["always"]["novelty"], outs["never"]["novelty"])
    _assert_frames_close(outs["always"]["residuals"], outs["never"]["residuals"])
    assert main(["novelty", "score", str(table), "--checkpoint", str(tmp_path / "always.ckpt"),
                 "--config", str(tmp_path / "never.yaml"), "--out", str(tmp_path / "a.parquet")]) == 0
    _assert_frames_close(pd.read_parquet(tmp_path / "a.parquet"), outs["never"]["novelty"])
    prov = io.read_provenance(tmp_path / "always_novelty.parquet")
    assert prov["n_hits"] == int(outs["never"]["novelty"][NOVELTY_HIT].sum())


def test_parquet_stream_gathers_plates_into_row_groups(tmp_path):
    import pyarrow.parquet as pq

    df = _screen(n_plates=5)  # 96 rows per plate
    with ParquetStream(tmp_path / "t.parquet", row_group_rows=200) as out:
        for _, rows in df.groupby(PLATE, sort=False):
            out.write(rows)
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [288, 192]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)
