"""The plate and screen reports in a real browser: headless Chromium loads them from disk.

Checks: the page's script ran to the end without an error (``data-report-ready="ok"`` in the dumped
DOM, no ``Uncaught`` or other console message on Chromium's log), the key sections exist, no
request left the page (the page's own Resource Timing count, Chromium's net log and the CSP), and
a screenshot is drawn.  Needs Debian's ``chromium`` (``apt-get install chromium``); skipped with
that reason where it is absent.  ``CYTOSCREEN_SCREENSHOT_DIR=docs`` also copies the screenshots
there (docs/report_plate.png, docs/report_index.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cytoscreen.cli import main
from tests.fixtures.report import PageParser, chromium, external_references

pytestmark = pytest.mark.skipif(
    chromium() is None,
    reason="needs Chromium (Debian: apt-get install chromium) to render the reports; not installed",
)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    # nothing resolves: even a request that slipped past the CSP could not leave the machine
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def render(
    page: Path, tmp: Path, *, window: str = "1400,2000", fragment: str = ""
) -> tuple[str, str, Path, list[str]]:
    """Load ``page`` in headless Chromium: (DOM after scripts, Chromium's log, screenshot, URLs the
    page itself asked the network for).  ``fragment`` is appended to the URL (``#selftest`` makes
    the page hover a well and sort a table itself and record the outcome)."""
    shot, netlog = tmp / f"{page.stem}.png", tmp / f"{page.stem}.netlog.json"
    cmd = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp / 'profile'}",
        f"--window-size={window}",
        f"--log-net-log={netlog}",
        f"--screenshot={shot}",
        "--dump-dom",
        page.resolve().as_uri() + fragment,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    if not shot.exists():  # some builds do one of --dump-dom / --screenshot per run
        again = [c for c in cmd if c != "--dump-dom" and not c.startswith("--log-net-log")]
        subprocess.run(again, capture_output=True, text=True, timeout=180, check=True)
    return res.stdout, res.stderr, shot, page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of network requests a page started (Chromium's own background requests have the
    initiator "not an origin" and are left out)."""
    if not netlog.exists():
        return []
    text = netlog.read_text(errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):  # a net log cut short at exit lacks its closing brackets
        text += "]}"
    try:
        log = json.loads(text)
    except ValueError:
        return re.findall(
            r'"url":"((?:https?|wss?|ftp)://[^"]*)","[^}]*"initiator":"(?!not an origin)', text
        )
    types = {v: k for k, v in log.get("constants", {}).get("logEventTypes", {}).items()}
    urls = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if types.get(event.get("type")) == "URL_REQUEST_START_JOB" and "url" in params:
            if params.get("initiator") != "not an origin":
                urls.append(params["url"])
    return urls


def console_messages(log: str) -> list[str]:
    """Console lines (errors, warnings, CSP violations) Chromium logged for the page."""
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def reports(report_screen, tmp_path_factory) -> Path:
    r = report_screen
    out = tmp_path_factory.mktemp("browser_reports")
    for plate in ("SYN001", "SYN002"):
        assert (
            main(
                [
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
                    "--wells",
                    str(r.plate(plate, "wells.parquet")),
                    "--novelty",
                    str(r.novelty),
                    "--counts",
                    str(r.plate(plate, "segmentation.parquet")),
                    "--out",
                    str(out / f"{plate}.html"),
                ]
            )
            == 0
        )
    assert (
        main(
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
                "--out",
                str(out / "index.html"),
            ]
        )
        == 0
    )
    return out


def _check_loaded(dom: str, log: str, requests: list[str], shot: Path) -> PageParser:
    parsed = PageParser(dom)
    body = parsed.find("body")[0]
    assert body.get("data-report-ready") == "ok", "the page's script did not run to its end"
    assert body.get("data-external-requests") == "0" and "data-js-errors" not in body
    assert console_messages(log) == [], console_messages(log)
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape[0] >= 1000 and img.std() > 10  # a drawn page, not a blank one
    return parsed


def _check_interactive(page: Path, tmp: Path) -> None:
    """Hovering a well fills the heatmap's info line; a header click sorts its table both ways."""
    (tmp / "selftest").mkdir()
    dom, log, _, _ = render(page, tmp / "selftest", window="800,600", fragment="#selftest")
    assert PageParser(dom).find("body")[0].get("data-selftest") == "ok"
    assert console_messages(log) == []


def _keep_screenshot(shot: Path, name: str) -> None:
    target = os.environ.get("CYTOSCREEN_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(target) / name)


def test_plate_report_in_chromium(reports, tmp_path):
    page = reports / "SYN001.html"
    assert external_references(page.read_text()) == []
    dom, log, shot, requests = render(page, tmp_path)
    parsed = _check_loaded(dom, log, requests, shot)
    for sid in (
        "summary",
        "glance",
        "heatmaps",
        "hm-qc",
        "hm-focus",
        "hm-signal",
        "hm-novelty",
        "controls",
        "control-plot",
        "zprime",
        "gallery",
        "gallery-qc",
        "gallery-hits",
        "wells",
        "well-table",
        "provenance",
    ):
        assert sid in parsed.ids, sid
    assert len(parsed.find("rect", cls="well", within="hm-qc")) == 96
    assert parsed.find("img", within="gallery-qc") and parsed.find("img", within="gallery-hits")
    _keep_screenshot(shot, "report_plate.png")
    _check_interactive(page, tmp_path)


def test_screen_report_in_chromium(reports, tmp_path):
    dom, log, shot, requests = render(reports / "index.html", tmp_path, window="1400,1500")
    parsed = _check_loaded(dom, log, requests, shot)
    for sid in (
        "plates",
        "plate-table",
        "hits",
        "hits-csv",
        "umap",
        "umap-cluster",
        "umap-moa",
        "clusters",
        "cluster-table",
        "evaluation",
    ):
        assert sid in parsed.ids, sid
    assert [a["href"] for a in parsed.find("a", within="plate-table")] == [
        "SYN001.html",
        "SYN002.html",
    ]
    _keep_screenshot(shot, "report_index.png")
    _check_interactive(reports / "index.html", tmp_path)


def test_a_broken_page_is_caught(tmp_path):
    """The checks above would notice a script error and an external request."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="http://example.invalid/x.png"><script>undefinedFunction();</script></body></html>'
    )
    dom, log, _, requests = render(bad, tmp_path, window="400,300")
    assert "data-report-ready" not in PageParser(dom).find("body")[0]
    assert any("Uncaught ReferenceError" in line for line in console_messages(log))
    assert "http://example.invalid/x.png" in requests
