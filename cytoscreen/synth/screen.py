"""Synthetic high-content screen: deterministic plates of fluorescence images with known phenotypes.

The demo data and the ground truth of accuracy tests.  Cells are drawn as textured blobs in three
channels (DNA, Tubulin, Actin); negative-control (DMSO) wells sit in the first and last plate
columns, a positive control in column 2, and treatments from :data:`MOA_CLASSES` fill the rest,
each MoA changing cell count, size, shape, intensity or texture in its own way.  Every plate gets a
batch offset (intensity gain and background), and a few sites are deliberately blurred or
saturated so QC has something to find.  Output, as DESIGN.md §2 describes::

    OUT/images/<plate>/<plate>_<well>_s<site>_w<n>.tif     ImageXpress names, uint16
    OUT/platemaps/<plate>.tsv                               well, perturbation, concentration, pert_type, moa
    OUT/plates.tsv                                          plate, images, layout, platemap, batch
    OUT/truth/<plate>.tsv                                   per site: n_cells, blurred, saturated
    OUT/truth/masks/<plate>/<plate>_<well>_s<site>_nuclei.tif   (with masks=True) nucleus labels
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError

logger = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("DNA", "Tubulin", "Actin")
CHANNEL_TOKENS: dict[str, str] = {"w1": "DNA", "w2": "Tubulin", "w3": "Actin"}
NEGCON = "DMSO"
POSCON = "staurosporine"


@dataclass(frozen=True)
class Phenotype:
    """Multiplicative effects on the control cell population (1.0 = no change)."""

    count: float = 1.0
    nucleus_radius: float = 1.0
    cell_radius: float = 1.0
    elongation: float = 1.0  # multiplies the cell aspect ratio minus 1
    dna: float = 1.0
    tubulin: float = 1.0
    actin: float = 1.0
    tubulin_texture: float = 1.0
    actin_texture: float = 1.0
    actin_texture_scale: float = 1.0

    def at_dose(self, strength: float) -> Phenotype:
        """Interpolate every effect geometrically between control (0) and full effect (1)."""
        return Phenotype(**{k: float(v**strength) for k, v in self.__dict__.items()})

    def jitter(self, rng: np.random.Generator, sd: float) -> Phenotype:
        """Compound-specific variation: each non-unit effect scaled by exp(N(0, sd))."""
        return Phenotype(
            **{k: (v if v == 1.0 else float(v ** np.exp(rng.normal(0, sd)))) for k, v in self.__dict__.items()}
        )


#: Known mechanism-of-action classes and the phenotype each one draws.
MOA_CLASSES: dict[str, Phenotype] = {
    "DNA damage": Phenotype(nucleus_radius=1.4, dna=1.5, count=0.8),
    "Microtubule destabilizer": Phenotype(tubulin_texture=0.15, tubulin=0.6, elongation=0.1, cell_radius=0.85),
    "Actin disruptor": Phenotype(actin=1.8, actin_texture=3.0, actin_texture_scale=0.4),
    "Cytotoxic": Phenotype(count=0.35, tubulin=0.8, actin=0.8, dna=0.85),
    "Cell spreading": Phenotype(elongation=2.5, cell_radius=1.35, tubulin=1.2),
    "Mitotic arrest": Phenotype(nucleus_radius=0.7, dna=2.2, cell_radius=0.75, elongation=0.1),
}
POSCON_PHENOTYPE = Phenotype(count=0.3, nucleus_radius=0.65, dna=2.0, cell_radius=0.6, tubulin=0.5)


@dataclass(frozen=True)
class SynthSettings:
    """Base cell population and imaging settings (control wells)."""

    image_px: int = 192
    cells_per_site: float = 28.0
    nucleus_radius_px: float = 7.0
    cell_radius_px: float = 15.0
    aspect: float = 1.5
    dna: float = 9000.0
    tubulin: float = 4000.0
    actin: float = 3000.0
    background: float = 300.0
    noise_sd: float = 40.0
    cell_cv: float = 0.15  # cell-to-cell variation of sizes and intensities
    compounds_per_moa: int = 3
    doses: tuple[float, ...] = (0.3, 1.0)  # concentrations in uM; effect strength = dose / max dose
    n_blurred: int = 2  # per plate
    n_saturated: int = 1  # per plate
    plate_gain_sd: float = 0.12
    plate_background_sd: float = 60.0
    extra: dict = field(default_factory=dict)


def treatments(settings: SynthSettings = SynthSettings(), seed: int = 0) -> pd.DataFrame:
    """The treatment list: perturbation, concentration, pert_type, moa, and its drawn phenotype."""
    rng = np.random.default_rng([seed, 7])
    rows = []
    for moa, base in MOA_CLASSES.items():
        for c in range(settings.compounds_per_moa):
            name = f"{moa.split()[0].lower()}-{c + 1}"
            compound = base.jitter(rng, 0.15)
            for dose in settings.doses:
                strength = dose / max(settings.doses)
                rows.append(
                    dict(perturbation=name, concentration=dose, pert_type="trt", moa=moa,
                         phenotype=compound.at_dose(strength))
                )
    return pd.DataFrame(rows)


def plate_layout(n_wells: int, plate_index: int, seed: int,
                 settings: SynthSettings = SynthSettings()) -> pd.DataFrame:
    """Platemap of one plate: controls in fixed columns, treatments shuffled per plate.

    Negcon (DMSO) fills the first and last column; the poscon every other row of column 2; the
    treatments fill the remaining wells, cycling through the treatment list so each treatment
    gets the same number of replicate wells (up to one), in a seeded order that differs by plate.
    """
    if n_wells not in (96, 384):
        raise ConfigError(f"synth: --wells must be 96 or 384, got {n_wells}")
    n_rows, n_cols = io.PLATE_SHAPES[n_wells]
    trt = treatments(settings, seed)
    wells, assigned = [], []
    rng = np.random.default_rng([seed, 11, plate_index])
    order = rng.permutation(len(trt))
    k = 0
    for r in range(n_rows):
        for c in range(1, n_cols + 1):
            well = io.well_from_row_col(r, c)
            if c in (1, n_cols):
                rec = dict(perturbation=NEGCON, concentration=0.0, pert_type="negcon", moa="control",
                           phenotype=Phenotype())
            elif c == 2 and r % 2 == 0:
                rec = dict(perturbation=POSCON, concentration=1.0, pert_type="poscon", moa="poscon",
                           phenotype=POSCON_PHENOTYPE)
            elif c == 2:
                rec = dict(perturbation=NEGCON, concentration=0.0, pert_type="negcon", moa="control",
                           phenotype=Phenotype())
            else:
                rec = trt.iloc[order[k % len(trt)]].to_dict()
                k += 1
            wells.append(well)
            assigned.append(rec)
    out = pd.DataFrame(assigned)
    out.insert(0, "well", wells)
    return out


def _rotated_grid(size: int, cx: float, cy: float, theta: float):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = x - cx, y - cy
    c, s = np.cos(theta), np.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field_ = gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(scale, 0.5))
    sd = field_.std()
    return field_ / sd if sd > 0 else field_


def draw_site(
    rng: np.random.Generator,
    phenotype: Phenotype,
    settings: SynthSettings = SynthSettings(),
    *,
    gain: float = 1.0,
    background: float | None = None,
    blurred: bool = False,
    saturated: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one site.

    Returns
    -------
    images
        ``(channel, y, x)`` uint16 array in :data:`CHANNELS` order.
    nuclei
        ``(y, x)`` uint16 nucleus label image (0 = background), the segmentation ground truth.
    """
    from scipy.ndimage import gaussian_filter

    s, p = settings, phenotype
    size = s.image_px
    area_scale = (size / 192.0) ** 2
    n_cells = int(rng.poisson(s.cells_per_site * area_scale * p.count))
    dna = np.zeros((size, size), np.float32)
    tub = np.zeros_like(dna)
    act = np.zeros_like(dna)
    labels = np.zeros((size, size), np.uint16)
    tub_tex = _smooth_noise(rng, (size, size), 1.5)
    act_tex = _smooth_noise(rng, (size, size), 2.0 * p.actin_texture_scale)
    dna_tex = _smooth_noise(rng, (size, size), 1.0)
    for i in range(n_cells):
        cv = lambda: float(np.exp(rng.normal(0, s.cell_cv)))  # noqa: E731
        cx, cy = rng.uniform(0, size, 2)
        theta = rng.uniform(0, np.pi)
        aspect = 1.0 + (s.aspect - 1.0) * p.elongation * cv()
        rc = s.cell_radius_px * p.cell_radius * cv()
        rn = min(s.nucleus_radius_px * p.nucleus_radius * cv(), 0.8 * rc)
        half = int(np.ceil(rc * aspect * 1.6)) + 2
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, size)
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, size)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        c, sn = np.cos(theta), np.sin(theta)
        u, v = dx * c + dy * sn, -dx * sn + dy * c
        d_cell = np.sqrt((u / (rc * np.sqrt(aspect))) ** 2 + (v * np.sqrt(aspect) / rc) ** 2)
        d_nuc = np.sqrt(dx**2 + dy**2) / rn
        cell = 1.0 / (1.0 + np.exp((d_cell - 1.0) * 8.0))
        nuc = 1.0 / (1.0 + np.exp((d_nuc - 1.0) * 10.0))
        rim = np.exp(-(((d_cell - 0.9) / 0.18) ** 2))
        sl = (slice(y0, y1), slice(x0, x1))
        dna[sl] += nuc * s.dna * p.dna * cv()
        tub[sl] += cell * (1 - 0.6 * nuc) * s.tubulin * p.tubulin * cv()
        act[sl] += (0.35 * cell + rim) * s.actin * p.actin * cv()
        labels[sl][d_nuc < 1.0] = i + 1
    dna *= 1.0 + 0.25 * dna_tex
    tub *= np.clip(1.0 + 0.6 * p.tubulin_texture * tub_tex, 0.05, None)
    act *= np.clip(1.0 + 0.4 * p.actin_texture * act_tex, 0.05, None)
    bg = s.background if background is None else background
    stack = np.stack([dna, tub, act]) * gain
    if blurred:
        stack = np.stack([gaussian_filter(ch, 4.0) for ch in stack])
    if saturated:
        stack *= 12.0
    stack += bg + rng.normal(0, s.noise_sd, stack.shape).astype(np.float32)
    return np.clip(stack, 0, 65535).astype(np.uint16), labels


def synth_screen(
    out: str | Path,
    *,
    plates: int = 2,
    wells: int = 96,
    sites: int = 2,
    seed: int = 0,
    settings: SynthSettings = SynthSettings(),
    masks: bool = False,
    plate_prefix: str = "SYN",
) -> pd.DataFrame:
    """Draw a synthetic screen into ``out``; return the plate table that was written."""
    import tifffile

    out = Path(out)
    if plates < 1 or sites < 1:
        raise ConfigError("synth: --plates and --sites must be at least 1")
    plate_rows = []
    for p in range(plates):
        plate = f"{plate_prefix}{p + 1:03d}"
        rng_plate = np.random.default_rng([seed, 1, p])
        gain = float(np.exp(rng_plate.normal(0, settings.plate_gain_sd)))
        background = float(max(settings.background + rng_plate.normal(0, settings.plate_background_sd), 50))
        layout = plate_layout(wells, p, seed, settings)
        # QC failures go to treatment wells with a normal cell density, so a blurred site still
        # has cells to blur (a near-empty field looks sharp: its contrast is camera noise)
        dense = np.array([ph.count >= 0.7 for ph in layout["phenotype"]])
        trt_idx = np.flatnonzero((layout["pert_type"].to_numpy() == "trt") & dense)
        picks = rng_plate.choice(len(trt_idx) * sites, settings.n_blurred + settings.n_saturated, replace=False)
        blurred = {(int(trt_idx[k // sites]), int(k % sites + 1)) for k in picks[: settings.n_blurred]}
        saturated = {(int(trt_idx[k // sites]), int(k % sites + 1)) for k in picks[settings.n_blurred :]}
        img_dir = out / "images" / plate
        img_dir.mkdir(parents=True, exist_ok=True)
        truth = []
        for w, rec in layout.iterrows():
            for site in range(1, sites + 1):
                rng = np.random.default_rng([seed, 2, p, w, site])
                is_blur, is_sat = (w, site) in blurred, (w, site) in saturated
                stack, labels = draw_site(rng, rec["phenotype"], settings, gain=gain,
                                          background=background, blurred=is_blur, saturated=is_sat)
                for ci, token in enumerate(CHANNEL_TOKENS):
                    name = f"{plate}_{rec['well']}_s{site}_{token}.tif"
                    with io.atomic_path(img_dir / name) as tmp:
                        tifffile.imwrite(tmp, stack[ci], compression="zlib", compressionargs={"level": 1})
                if masks:
                    mdir = out / "truth" / "masks" / plate
                    mdir.mkdir(parents=True, exist_ok=True)
                    with io.atomic_path(mdir / f"{plate}_{rec['well']}_s{site}_nuclei.tif") as tmp:
                        tifffile.imwrite(tmp, labels, compression="zlib")
                truth.append(dict(well=rec["well"], site=site, n_cells=int(labels.max() and len(np.unique(labels)) - 1),
                                  blurred=is_blur, saturated=is_sat))
        platemap = layout.drop(columns="phenotype")
        io.write_table(platemap, out / "platemaps" / f"{plate}.tsv")
        io.write_table(pd.DataFrame(truth), out / "truth" / f"{plate}.tsv")
        batch = f"batch{p // 2 + 1}"
        plate_rows.append(dict(plate=plate, images=f"images/{plate}", layout="imagexpress",
                               platemap=f"platemaps/{plate}.tsv", batch=batch))
        logger.info("plate %s: drew %d wells x %d sites x %d channels into %s (gain %.2f, %d blurred, %d saturated)",
                    plate, len(layout), sites, len(CHANNELS), img_dir, gain, len(blurred), len(saturated))
    table = pd.DataFrame(plate_rows)
    io.write_table(table, out / "plates.tsv")
    return table


def default_settings(image_px: int | None = None, **overrides) -> SynthSettings:
    s = SynthSettings()
    if image_px is not None:
        s = replace(s, image_px=image_px)
    return replace(s, **overrides) if overrides else s


__all__: Sequence[str] = ("MOA_CLASSES", "Phenotype", "SynthSettings", "draw_site", "plate_layout",
                          "synth_screen", "treatments")
