"""`cytoscreen report plate|screen`: outputs, flags, exit codes and messages."""

import pytest

from cytoscreen.cli import main
from tests.fixtures.report import PageParser, external_references


def _plate_args(r, plate, out, *extra):
    return [
        "report",
        "plate",
        "--config",
        str(r.config),
        "--plate",
        plate,
        "--qc",
        str(r.plate(plate, "qc.parquet")),
        "--images",
        str(r.plate(plate, "images.parquet")),
        "--out",
        str(out),
        *extra,
    ]


def test_plate_command_writes_report(report_screen, tmp_path, capsys):
    r = report_screen
    out = tmp_path / "reports" / "SYN001.html"
    rc = main(
        _plate_args(
            r,
            "SYN001",
            out,
            "--wells",
            str(r.plate("SYN001", "wells.parquet")),
            "--novelty",
            str(r.novelty),
            "--counts",
            str(r.plate("SYN001", "segmentation.parquet")),
            "--dose",
            str(r.dose),
        )
    )
    assert rc == 0 and out.exists()
    text = out.read_text()
    assert "Plate SYN001" in text and 'id="hm-novelty"' in text and "Stage not run" not in text
    assert 'id="dose-table"' in text and str(r.dose) in text
    assert external_references(text) == []
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "Z' " in err
    assert not list(out.parent.glob(".*.tmp"))  # atomic write leaves no temporary file
    assert str(r.novelty) in text  # inputs listed in the footer


def test_plate_command_readout_override_and_missing_readout(report_screen, tmp_path):
    out = tmp_path / "p.html"
    assert (
        main(_plate_args(report_screen, "SYN001", out, "--readout", "Metadata_Actin_MeanIntensity"))
        == 0
    )
    assert "<code>Metadata_Actin_MeanIntensity</code> (set by report.readout)" in out.read_text()
    assert (
        main(_plate_args(report_screen, "SYN001", out, "--readout", "Metadata_Mito_MeanIntensity"))
        == 0
    )
    text = out.read_text()
    assert (
        "Stage not run: readout" in text
        and "Metadata_Mito_MeanIntensity is not in the tables" in text
    )


def test_plate_command_errors(report_screen, tmp_path, capsys):
    r = report_screen
    args = [
        "report",
        "plate",
        "--plate",
        "SYN001",
        "--qc",
        str(tmp_path / "missing.parquet"),
        "--out",
        str(tmp_path / "x.html"),
    ]
    assert main(args) == 4
    assert "missing.parquet: file not found" in capsys.readouterr().err
    assert (
        main(
            _plate_args(r, "NOPE", tmp_path / "x.html")[:6]
            + ["--qc", str(r.plate("SYN001", "qc.parquet")), "--out", str(tmp_path / "x.html")]
        )
        == 4
    )
    err = capsys.readouterr().err
    assert "error: plate NOPE: no sites in the QC table" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("report: {thumbnail_format: gif}\n")
    assert (
        main(
            [
                "report",
                "plate",
                "--config",
                str(bad),
                "--plate",
                "SYN001",
                "--qc",
                str(r.plate("SYN001", "qc.parquet")),
                "--out",
                str(tmp_path / "x.html"),
            ]
        )
        == 3
    )
    assert not (tmp_path / "x.html").exists()
    with pytest.raises(SystemExit) as err:
        main(["report", "plate", "--plate", "SYN001"])
    assert err.value.code == 2


def test_screen_command_links_and_sections(report_screen, tmp_path):
    r = report_screen
    plates_dir = tmp_path / "reports" / "plates"
    for plate in ("SYN001", "SYN002"):
        assert main(_plate_args(r, plate, plates_dir / f"{plate}.html")) == 0
    out = tmp_path / "reports" / "index.html"
    rc = main(
        [
            "report",
            "screen",
            "--config",
            str(r.config),
            "--qc",
            str(r.plate("SYN001", "qc.parquet")),
            str(r.plate("SYN002", "qc.parquet")),
            "--novelty",
            str(r.novelty),
            "--moa",
            str(r.moa),
            "--evaluation",
            str(r.evaluation),
            "--profiles",
            str(r.profiles),
            "--plate-reports",
            str(plates_dir / "SYN001.html"),
            str(plates_dir / "SYN002.html"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = out.read_text()
    page = PageParser(text)
    assert [a["href"] for a in page.find("a", within="plate-table")] == [
        "plates/SYN001.html",
        "plates/SYN002.html",
    ]
    assert {"umap-cluster", "cluster-table", "hit-table", "evaluation-table", "pca-plate"} <= set(
        page.ids
    )
    assert external_references(text) == []


def test_screen_command_defaults_to_reports_beside_index(report_screen, tmp_path, capsys):
    r = report_screen
    assert main(_plate_args(r, "SYN001", tmp_path / "SYN001.html")) == 0
    out = tmp_path / "index.html"
    assert (
        main(
            [
                "report",
                "screen",
                "--qc",
                str(r.plate("SYN001", "qc.parquet")),
                str(r.plate("SYN002", "qc.parquet")),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    page = PageParser(out.read_text())
    assert [a["href"] for a in page.find("a", within="plate-table")] == ["SYN001.html"]
    err = capsys.readouterr().err
    assert "no plate report beside" in err and "for SYN002" in err
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    assert (
        main(
            [
                "report",
                "screen",
                "--qc",
                str(r.plate("SYN001", "qc.parquet")),
                "--evaluation",
                str(bad),
                "--out",
                str(out),
            ]
        )
        == 4
    )
    assert "cannot read evaluation JSON" in capsys.readouterr().err


def test_help_lists_actions(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = capsys.readouterr().out
    assert "plate" in out and "screen" in out
    with pytest.raises(SystemExit):
        main(["report", "screen", "--help"])
    assert "--plate-reports" in capsys.readouterr().out
