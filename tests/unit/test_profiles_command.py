"""`cytoscreen profiles ...` from outside: the BBBC021 call, config precedence, records, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from cytoscreen import cli, io
from cytoscreen.config import load_schema
from cytoscreen.profiles import (
    AGGREGATE_METHODS,
    CONSENSUS_METHODS,
    NORMALIZE_METHODS,
    SELECT_OPERATIONS,
    SPHERIZE_METHODS,
    normalize,
)
from tests.fixtures.profiles import bbbc021_wells, synthetic_sites, synthetic_wells


@pytest.fixture()
def bbbc_parquet(tmp_path):
    path = tmp_path / "wells.parquet"
    bbbc021_wells().to_parquet(path, index=False)
    return path


def profiles_parsers() -> dict:
    parser = cli.build_parser()
    top = next(a for a in parser._actions if a.dest == "command")
    sub = next(a for a in top.choices["profiles"]._actions if a.dest == "action")
    return dict(sub.choices)


def test_bbbc021_normalize_call(bbbc_parquet, tmp_path, capsys):
    out = tmp_path / "normalized.parquet"
    rc = cli.main(["profiles", "normalize", str(bbbc_parquet), str(out),
                   "--method", "mad_robustize"])
    assert rc == 0
    assert "Metadata_Compound == 'DMSO'" in capsys.readouterr().err
    got = pd.read_parquet(out)
    wells = bbbc021_wells()
    assert list(got.columns) == list(wells.columns) and len(got) == len(wells)
    feats = io.feature_columns(got)
    assert len(feats) == 516 and (got[feats].dtypes == np.float32).all()
    expected = normalize(wells)
    np.testing.assert_array_equal(got[feats].to_numpy(), expected[feats].to_numpy())
    prov = io.read_provenance(out)
    assert prov["stage"] == "profiles.normalize"
    assert prov["parameters"]["method"] == "mad_robustize"


def test_reference_options_and_csv(tmp_path):
    src = tmp_path / "wells.csv"
    bbbc021_wells().to_csv(src, index=False)
    out = tmp_path / "norm.csv"
    rc = cli.main(["profiles", "normalize", str(src), str(out), "--reference-col",
                   "Metadata_moa", "--reference-value", "DMSO", "--method", "robustize"])
    assert rc == 0
    a = pd.read_csv(out)
    b = normalize(bbbc021_wells(), method="robustize")
    np.testing.assert_allclose(a[io.feature_columns(a)], b[io.feature_columns(b)], rtol=1e-6)


def test_missing_reference_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "wells.parquet"
    bbbc021_wells().drop(columns=["Metadata_Compound", "Metadata_moa"]).to_parquet(src)
    rc = cli.main(["profiles", "normalize", str(src), str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert rc == 4
    assert "--reference-col COLUMN --reference-value VALUE" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.parquet").exists()


def test_plate_without_controls_exit_code(tmp_path, capsys):
    df = synthetic_wells()
    df.loc[df[io.PLATE] == "P2", io.PERT_TYPE] = "trt"
    src = tmp_path / "wells.parquet"
    df.to_parquet(src)
    rc = cli.main(["profiles", "normalize", str(src), str(tmp_path / "o.parquet")])
    assert rc == 4
    assert "P2 (0)" in capsys.readouterr().err


def test_bad_output_suffix_and_bad_method(tmp_path, bbbc_parquet):
    assert cli.main(["profiles", "normalize", str(bbbc_parquet), str(tmp_path / "o.xlsx")]) == 3
    with pytest.raises(SystemExit) as err:
        cli.main(["profiles", "normalize", str(bbbc_parquet), str(tmp_path / "o.parquet"),
                  "--method", "zscore"])
    assert err.value.code == 2


def test_config_gives_defaults_and_flags_override(tmp_path, bbbc_parquet):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"profiles": {"normalize_method": "standardize"}}))
    wells = bbbc021_wells()
    out = tmp_path / "a.parquet"
    assert cli.main(["profiles", "normalize", str(bbbc_parquet), str(out), "--config",
                     str(cfg)]) == 0
    assert io.read_provenance(out)["parameters"]["method"] == "standardize"
    expected = normalize(wells, method="standardize")
    np.testing.assert_array_equal(pd.read_parquet(out)["Cells_AreaShape_Area"],
                                  expected["Cells_AreaShape_Area"])
    assert cli.main(["profiles", "normalize", str(bbbc_parquet), str(out), "--config",
                     str(cfg), "--method", "robustize"]) == 0
    assert io.read_provenance(out)["parameters"]["method"] == "robustize"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"profiles": {"normalize_method": "zscore"}}))
    assert cli.main(["profiles", "normalize", str(bbbc_parquet), str(out), "--config",
                     str(bad)]) == 3


def test_cli_defaults_and_choices_match_schema():
    props = load_schema("config")["properties"]["profiles"]["properties"]
    parsers = profiles_parsers()
    assert set(parsers) == {"aggregate", "normalize", "select", "consensus", "asinh", "spherize", "pca",
                            "harmony"}
    seen = set()
    for sub in parsers.values():
        for action in sub._actions:
            if action.dest in props:
                seen.add(action.dest)
                assert action.default == props[action.dest]["default"], action.dest
    assert seen == set(props) - {"moa"}  # every key has a flag; moa's is --chain moa
    moa = props["moa"]["properties"]
    for key, entry in moa.items():  # the MoA sub-chain overrides profiles keys, same types and enums
        assert key in props and entry["type"] == props[key]["type"], key
        assert entry.get("enum") == props[key].get("enum"), key
        assert entry.get("items") == props[key].get("items"), key
    assert tuple(props["normalize_method"]["enum"]) == NORMALIZE_METHODS
    assert tuple(props["aggregate_method"]["enum"]) == AGGREGATE_METHODS
    assert tuple(props["consensus_method"]["enum"]) == CONSENSUS_METHODS
    assert tuple(props["spherize_method"]["enum"]) == SPHERIZE_METHODS
    assert tuple(props["spherize"]["enum"]) == (None, *SPHERIZE_METHODS)
    assert tuple(props["select_operations"]["items"]["enum"]) == SELECT_OPERATIONS
    choices = {a.dest: a.choices for s in parsers.values() for a in s._actions if a.choices}
    assert tuple(choices["normalize_method"]) == NORMALIZE_METHODS
    assert tuple(choices["select_operations"]) == SELECT_OPERATIONS
    assert tuple(choices["consensus_method"]) == CONSENSUS_METHODS
    assert tuple(choices["aggregate_method"]) == AGGREGATE_METHODS


def test_workflow_chain_by_cli(tmp_path):
    """aggregate per plate -> normalize per plate -> select on the screen -> consensus."""
    sites = synthetic_sites(plates=2, wells=12, sites=3, features=8)
    qc = sites[[io.PLATE, io.WELL, io.SITE, "QC_blurry"]]
    sites = sites.drop(columns=["QC_blurry", "QC_saturated"])
    normalized = []
    for plate, rows in sites.groupby(io.PLATE):
        d = tmp_path / "results" / plate
        d.mkdir(parents=True)
        rows.to_parquet(d / "sites.parquet")
        qc[qc[io.PLATE] == plate].to_parquet(d / "qc.parquet")
        assert cli.main(["profiles", "aggregate", str(d / "sites.parquet"),
                         str(d / "wells.parquet"), "--qc", str(d / "qc.parquet")]) == 0
        w = pd.read_parquet(d / "wells.parquet")
        assert w.loc[w[io.WELL] == "A02", io.N_SITES].item() == 2
        assert cli.main(["profiles", "normalize", str(d / "wells.parquet"),
                         str(d / "normalized.parquet")]) == 0
        normalized.append(str(d / "normalized.parquet"))
    screen = tmp_path / "results" / "screen"
    fs = screen / "feature_selected.parquet"
    assert cli.main(["profiles", "select", *normalized, str(fs), "--per-plate-dir",
                     str(tmp_path / "results"), "--corr-threshold", "0.8"]) == 0
    record = json.loads((screen / "feature_selected.selection.json").read_text())
    table = pd.read_csv(screen / "feature_selected.selection.tsv", sep="\t")
    selected = pd.read_parquet(fs)
    assert record["kept"] == io.feature_columns(selected)
    assert table["kept"].sum() == len(record["kept"])
    assert len(selected) == 24
    per_plate = pd.read_parquet(tmp_path / "results" / "P1" / "feature_selected.parquet")
    assert io.feature_columns(per_plate) == record["kept"] and len(per_plate) == 12
    assert io.read_provenance(fs)["upstream"]["stage"] == "profiles.normalize"
    again = tmp_path / "again.parquet"
    assert cli.main(["profiles", "select", normalized[0], str(again), "--selection",
                     str(screen / "feature_selected.selection.json")]) == 0
    assert io.feature_columns(pd.read_parquet(again)) == record["kept"]
    cons = screen / "consensus.parquet"
    assert cli.main(["profiles", "consensus", str(fs), str(cons), "--method", "modz"]) == 0
    c = pd.read_parquet(cons)
    assert len(c) == 9  # DMSO + 4 compounds x 2 concentrations
    assert io.read_provenance(cons)["parameters"]["method"] == "modz"


def test_aggregate_with_normalized_equals_the_two_steps(tmp_path, capsys):
    """``aggregate --normalized`` (the workflow's per-plate job) writes the same wells and the same
    normalized table, value for value, as ``aggregate`` then ``normalize`` in two processes, with
    the normalize settings of --config."""
    sites = synthetic_sites(plates=2, wells=12, sites=3, features=8)
    sites.to_parquet(tmp_path / "sites.parquet")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"profiles": {"normalize_method": "robustize"}}))
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    assert cli.main(["profiles", "aggregate", str(tmp_path / "sites.parquet"), str(two / "wells.parquet"),
                     "--config", str(cfg)]) == 0
    assert cli.main(["profiles", "normalize", str(two / "wells.parquet"), str(two / "normalized.parquet"),
                     "--config", str(cfg)]) == 0
    assert cli.main(["profiles", "aggregate", str(tmp_path / "sites.parquet"), str(one / "wells.parquet"),
                     "--normalized", str(one / "normalized.parquet"), "--config", str(cfg)]) == 0
    for name in ("wells.parquet", "normalized.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(one / name), pd.read_parquet(two / name),
                                      check_exact=True)
    wells = pd.read_parquet(one / "wells.parquet")
    assert not pd.read_parquet(one / "normalized.parquet").equals(wells)  # it was normalized
    prov = io.read_provenance(one / "normalized.parquet")
    assert prov["stage"] == "profiles.normalize" and prov["parameters"]["method"] == "robustize"
    assert prov["upstream"]["stage"] == "profiles.aggregate"
    with pytest.raises(SystemExit):  # an option of aggregate only
        cli.main(["profiles", "normalize", str(one / "wells.parquet"), str(tmp_path / "x.parquet"),
                  "--normalized", str(tmp_path / "y.parquet")])
    assert "unrecognized arguments: --normalized" in capsys.readouterr().err


def test_select_spherize_and_blocklist_file(tmp_path):
    df = synthetic_wells(plates=2, wells=60, features=6, negcon=40)
    src = tmp_path / "n.parquet"
    df.to_parquet(src)
    block = tmp_path / "block.txt"
    block.write_text("f5\n")
    out = tmp_path / "fs.parquet"
    assert cli.main(["profiles", "select", str(src), str(out), "--operations", "variance_threshold",
                     "blocklist", "--blocklist-file", str(block), "--spherize", "ZCA"]) == 0
    got = pd.read_parquet(out)
    feats = io.feature_columns(got)
    assert "f5" not in feats and "f3" not in feats
    ref = got[got[io.PERT_TYPE] == "negcon"][feats].to_numpy(np.float64)
    assert np.abs(np.cov(ref.T) - np.eye(len(feats))).max() < 1e-3
    rec = json.loads((tmp_path / "fs.selection.json").read_text())
    assert rec["spherize"]["method"] == "ZCA"


def test_too_few_paths(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["profiles", "consensus", str(tmp_path / "x.parquet")])
    assert err.value.code == 2
    assert "OUTPUT" in capsys.readouterr().err


def test_stacked_inputs_must_share_features(tmp_path, capsys):
    a = synthetic_wells(plates=1)
    b = synthetic_wells(plates=1).rename(columns={"f0": "g0"})
    a.to_parquet(tmp_path / "a.parquet")
    b.to_parquet(tmp_path / "b.parquet")
    rc = cli.main(["profiles", "select", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"),
                   str(tmp_path / "o.parquet")])
    assert rc == 4 and "feature columns differ" in capsys.readouterr().err


def test_read_profiles_matches_pandas(tmp_path):
    from cytoscreen.profiles.tables import read_profiles

    df = synthetic_wells(plates=2)
    df.loc[3, "f2"] = np.nan
    df["QC_blurry"] = False
    path = tmp_path / "w.parquet"
    io.write_parquet(df, path)
    got = read_profiles(path)
    pd.testing.assert_frame_equal(got, pd.read_parquet(path))
    feats = io.feature_columns(got)
    pos = [got.columns.get_loc(c) for c in feats]
    assert pos == list(range(pos[0], pos[0] + len(feats)))
    block = got.iloc[:, pos[0] : pos[0] + len(feats)]
    x = block.to_numpy(copy=False)
    assert x.dtype == np.float32
    assert np.shares_memory(x, block.to_numpy(copy=False))  # one block, no copy
    df["f0"] = df["f0"].astype(np.float64)  # mixed float widths: float64 matrix
    io.write_parquet(df, path)
    got = read_profiles(path)
    assert (got[feats].dtypes == np.float64).all()
    df["f1"] = "text"  # a non-float feature: the generic reader (and later a clear error)
    io.write_parquet(df, path)
    assert read_profiles(path)["f1"].iloc[0] == "text"


@pytest.mark.parametrize("copy_on_write", [False, True])
def test_read_profiles_keeps_metadata_of_a_sliced_table(tmp_path, copy_on_write):
    """A file written from a slice stores a RangeIndex that starts at its offset; with pandas'
    copy-on-write (pycytominer switches it on, pandas 3 has it by default) the metadata columns
    must still line up with the features, as pandas.read_parquet gives them."""
    import numpy as np
    import pandas as pd

    from cytoscreen.profiles.tables import read_profiles

    df = pd.DataFrame({
        "Metadata_Plate": ["P1"] * 72,
        "Metadata_Well": [f"A{i:02d}" for i in range(72)],
        "f1": np.arange(72, dtype="float32"),
        "f2": np.arange(72, dtype="float32") * 2,
    })
    path = tmp_path / "slice.parquet"
    df.iloc[36:].to_parquet(path)
    with pd.option_context("mode.copy_on_write", copy_on_write):
        got = read_profiles(path)
    pd.testing.assert_frame_equal(got, pd.read_parquet(path))
    assert got["Metadata_Well"].iloc[0] == "A36" and got["f1"].iloc[0] == 36.0
    assert got["Metadata_Plate"].notna().all()


def test_chain_moa_puts_the_moa_keys_in_place(tmp_path):
    from cytoscreen.argparse_ import section_defaults
    from cytoscreen.config import load_config
    from cytoscreen.profiles.command import chain_settings

    section = load_config(None)["profiles"]
    hits = chain_settings(section, "hits")
    moa = chain_settings(section, "moa")
    assert "moa" not in hits and "moa" not in moa
    assert hits == {k: v for k, v in section.items() if k != "moa"}
    defaults = section_defaults("profiles")
    assert hits["reference"] == defaults["reference"] == "negcon" and hits["spherize"] is None
    # the P2 chain of benchmarks/README.md "Real plates"
    assert (moa["reference"], moa["normalize_scale"], moa["asinh"], moa["spherize"]) == ("all", "screen", True, "ZCA")
    assert moa["select_operations"] == ["drop_na_columns", "drop_outliers"]
    assert (moa["spherize_regularization"], moa["spherize_epsilon"], moa["spherize_center"],
            moa["spherize_reference"]) == ("shrinkage", 0.1, "normalization", "negcon")
    assert moa["consensus_method"] == hits["consensus_method"]  # keys moa lacks keep the section's
    assert chain_settings(section, "moa", {"asinh": False})["asinh"] is False  # a flag wins
    # through the CLI: --chain moa normalizes against every well, the default against negcon
    df = synthetic_wells(plates=2, wells=24, features=6, negcon=8, seed=1, dtype=np.float64)
    src = tmp_path / "w.parquet"
    df.to_parquet(src)
    for chain, reference in (("hits", "negcon"), ("moa", "all")):
        out = tmp_path / f"{chain}.parquet"
        assert cli.main(["profiles", "normalize", str(src), str(out), "--chain", chain]) == 0
        params = io.read_provenance(out)["parameters"]
        assert params["reference"] == reference
    moa_out = pd.read_parquet(tmp_path / "moa.parquet")
    feats = io.feature_columns(df)
    medians = moa_out.groupby(io.PLATE)[feats].median().to_numpy()  # centred on all wells' median
    np.testing.assert_allclose(medians, 0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown profiles chain"):
        chain_settings(section, "umap")
