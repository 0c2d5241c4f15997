"""Plate report on a dose-response plate: fitted curves, and control distributions without
in-sample novelty scores."""

import base64
import io as _io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytoscreen import io, plate, stats
from cytoscreen.dose import fit
from cytoscreen.report import controls as rc
from cytoscreen.report import wells as rw
from cytoscreen.report.components import esc, fmt_value
from cytoscreen.report.pages.plate import plate_report
from tests.fixtures.report import PageParser

CONC = [0.31, 0.63, 1.25, 2.5, 5, 10, 20, 40, 80]
EC50 = {"A": 5.0, "B": 2.0}


def dose_plate(seed=0):
    """A BBBC013-like 96-well plate: column 1 calibration negcon, column 2 negcon the model trained
    on (in-sample score 1e-8), column 12 poscon, columns 3-11 compound A (rows A-D) and B (E-H) in
    a 9-step series following a log-logistic curve of known EC50."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(8):
        for c in range(1, 13):
            rec = {io.PLATE: "P1", io.WELL: io.well_from_row_col(r, c), io.SITE: 1}
            if c in (1, 2):
                split = "calibration" if c == 1 else "train"
                score = 1.0 + rng.normal(0, 0.1) if c == 1 else 1e-8
                rec.update({io.PERTURBATION: "DMSO", io.CONCENTRATION: 0.0, io.PERT_TYPE: "negcon",
                            io.NOVELTY_SCORE: score, io.NOVELTY_SPLIT: split})
            elif c == 12:
                rec.update({io.PERTURBATION: "toxin", io.CONCENTRATION: 1.0, io.PERT_TYPE: "poscon",
                            io.NOVELTY_SCORE: 9.0 + rng.normal(0, 0.3), io.NOVELTY_SPLIT: "none"})
            else:
                name, dose = ("A" if r < 4 else "B"), CONC[c - 3]
                score = fit.log_logistic4(dose, 1.0, 8.0, EC50[name], 1.5) + rng.normal(0, 0.2)
                rec.update({io.PERTURBATION: name, io.CONCENTRATION: dose, io.PERT_TYPE: "trt",
                            io.NOVELTY_SCORE: score, io.NOVELTY_SPLIT: "none"})
            rows.append(rec)
    table = pd.DataFrame(rows)
    qc = table[[io.PLATE, io.WELL, io.SITE, io.PERTURBATION, io.CONCENTRATION, io.PERT_TYPE]].copy()
    qc["Metadata_DNA_MeanIntensity"] = 100.0
    qc[io.QC_BLURRY] = False
    return qc, table.drop(columns=[io.SITE])


def _png(page, img_id):
    m = re.search(rf'id="{img_id}"[^>]*src="data:image/png;base64,([^"]+)"', page)
    return Image.open(_io.BytesIO(base64.b64decode(m.group(1))))


def test_plate_report_dose_section():
    qc, nov = dose_plate()
    dose = fit.dose_response(nov, io.NOVELTY_SCORE)
    page_text = plate_report(qc, plate="P1", novelty=nov, dose=dose)
    page = PageParser(page_text)
    assert {"dose", "dose-plot", "dose-table"} <= set(page.ids)
    assert _png(page_text, "dose-plot").size[0] > 300
    # one table row per compound, EC50 within 10% of the truth, shown as the table formats it
    by = dose.set_index(fit.COMPOUND)
    assert sorted(by.index) == ["A", "B"] and by[fit.FIT_STATUS].eq(fit.FIT_OK).all()
    for name, truth in EC50.items():
        assert by.loc[name, fit.EC50] == pytest.approx(truth, rel=0.10)
        assert f">{fmt_value(by.loc[name, fit.EC50])}</td>" in page_text
    table = page_text[page_text.index('id="dose-table"'):]
    assert table[: table.index("</table>")].count("<tr>") == 3  # header + A + B
    # compounds of other plates are left out; a table without dose columns is named
    other = pd.concat([dose, dose.assign(**{fit.COMPOUND: "elsewhere"})])
    text = plate_report(qc, plate="P1", novelty=nov, dose=other)
    assert "elsewhere" not in text[text.index('id="dose"'):text.index('id="gallery"')]
    assert "lacks" in plate_report(qc, plate="P1", novelty=nov, dose=dose[[fit.COMPOUND]])
    none = plate_report(qc, plate="P1", novelty=nov, dose=dose.iloc[:0])
    assert "No compound on this plate has wells at two or more doses" in none
    # two doses: a trend in the table, no curve to draw
    two = nov[~nov[io.CONCENTRATION].isin(CONC[2:])]
    short = fit.dose_response(two, io.NOVELTY_SCORE)
    assert short[fit.FIT_STATUS].eq(fit.FIT_TOO_FEW_DOSES).all() and len(short) == 2
    text = plate_report(qc, plate="P1", novelty=two, dose=short)
    assert 'id="dose-plot"' not in text and "no curve" in text and 'id="dose-table"' in text


def test_in_sample_control_scores_stay_out_of_control_distributions():
    qc, nov = dose_plate()
    summary = rw.well_summary(qc, novelty=nov)
    assert io.NOVELTY_SPLIT in summary.columns  # every Metadata_Novelty_* column is carried
    cq = rc.control_quality(summary, io.NOVELTY_SCORE)
    neg = summary[io.PERT_TYPE] == "negcon"
    calib = summary.loc[neg & (summary[io.NOVELTY_SPLIT] == "calibration"), io.NOVELTY_SCORE]
    pos = summary.loc[summary[io.PERT_TYPE] == "poscon", io.NOVELTY_SCORE]
    assert cq.n_negcon == 8 and cq.n_in_sample == 8 and cq.n_poscon == 8
    assert cq.mean_negcon == pytest.approx(calib.mean()) and cq.sd_negcon == pytest.approx(calib.std())
    assert cq.z_prime == pytest.approx(stats.z_prime(pos, calib))
    mixed = stats.z_prime(pos, summary.loc[neg, io.NOVELTY_SCORE])
    # the memorised wells would halve the negcon mean and widen its spread
    assert cq.z_prime - mixed > 0.1 and cq.mean_negcon > 1.8 * summary.loc[neg, io.NOVELTY_SCORE].mean()
    assert "left out" in cq.note
    page = plate_report(qc, plate="P1", novelty=nov)
    assert f'<strong id="zprime">{fmt_value(cq.z_prime)}</strong>' in page and "left out" in page
    # a readout that is not a novelty value keeps every control well
    dna = rc.control_quality(summary, "Metadata_DNA_MeanIntensity")
    assert dna.n_negcon == 16 and dna.n_in_sample == 0


def test_plate_hit_readout_is_the_auto_readout():
    qc, nov = dose_plate()
    out_of_sample = nov[io.NOVELTY_SPLIT] != "train"
    neg = (nov[io.PERT_TYPE] == "negcon") & out_of_sample
    log_score = np.log(nov[io.NOVELTY_SCORE])
    nov[io.NOVELTY_ROBUST_Z] = stats.robust_z(log_score, log_score[neg])
    nov.loc[~out_of_sample, io.NOVELTY_ROBUST_Z] = 0.0  # never used: in-sample
    pos = nov[io.PERT_TYPE] == "poscon"
    zp = stats.z_prime(nov.loc[pos, io.NOVELTY_ROBUST_Z], nov.loc[neg, io.NOVELTY_ROBUST_Z])
    nov[io.NOVELTY_PLATE_ZPRIME] = zp
    page_text = plate_report(qc, plate="P1", novelty=nov)
    page = PageParser(page_text)
    assert "hm-robustz" in page.ids and len(page.find("rect", cls="well", within="hm-robustz")) == 96
    assert f"Readout <code>{io.NOVELTY_ROBUST_Z}</code>" in page_text
    assert f'<strong id="zprime">{fmt_value(zp)}</strong>' in page_text  # same as the novelty stage's
    assert esc("Z' of the novelty stage's plate readout") in page_text
    # dose curves follow the same readout when the dose stage ran with report.readout auto
    dose = fit.dose_response(nov, plate.resolve_readout(nov)[0])
    assert dose[fit.READOUT].eq(io.NOVELTY_ROBUST_Z).all()
    with_dose = plate_report(qc, plate="P1", novelty=nov, dose=dose)
    assert f"Readout <code>{io.NOVELTY_ROBUST_Z}</code> against dose" in with_dose
