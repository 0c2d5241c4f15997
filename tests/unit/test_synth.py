"""The synthetic screen is deterministic and has the structure the accuracy tests rely on."""

import numpy as np
import pandas as pd
import tifffile

from cytoscreen.synth import MOA_CLASSES, Phenotype, SynthSettings, draw_site, plate_layout, treatments


def test_layout_controls_and_treatments():
    layout = plate_layout(96, 0, seed=0)
    assert len(layout) == 96 and layout["well"].is_unique
    neg = layout[layout["pert_type"] == "negcon"]["well"]
    assert {"A01", "H01", "A12", "H12"} <= set(neg) and len(neg) == 20
    assert set(layout.loc[layout["pert_type"] == "poscon", "well"]) == {"A02", "C02", "E02", "G02"}
    trt = layout[layout["pert_type"] == "trt"]
    assert trt["moa"].nunique() == len(MOA_CLASSES) >= 4
    # every treatment appears at least once per plate; layouts differ between plates
    assert len(trt.groupby(["perturbation", "concentration"])) == len(treatments())
    other = plate_layout(96, 1, seed=0)
    assert not (other["perturbation"].to_numpy() == layout["perturbation"].to_numpy()).all()
    assert plate_layout(384, 0, seed=0).shape[0] == 384


def test_same_seed_same_pixels_and_files(tiny_screen):
    a = draw_site(np.random.default_rng([1, 2]), Phenotype(), SynthSettings(image_px=64))
    b = draw_site(np.random.default_rng([1, 2]), Phenotype(), SynthSettings(image_px=64))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    img = tifffile.imread(tiny_screen / "images" / "SYN001" / "SYN001_A01_s1_w1.tif")
    assert img.dtype == np.uint16 and img.shape == (128, 128)
    plates = pd.read_csv(tiny_screen / "plates.tsv", sep="\t")
    assert list(plates["plate"]) == ["SYN001", "SYN002"] and set(plates["layout"]) == {"imagexpress"}


def test_phenotypes_change_what_they_claim():
    s = SynthSettings(image_px=192)

    def mean_of(ph, seed):
        imgs, labels = draw_site(np.random.default_rng(seed), ph, s)
        return imgs.astype(float).mean(axis=(1, 2)), len(np.unique(labels)) - 1

    ctrl = np.mean([mean_of(Phenotype(), k)[1] for k in range(6)])
    toxic = np.mean([mean_of(MOA_CLASSES["Cytotoxic"], k)[1] for k in range(6)])
    assert toxic < 0.6 * ctrl  # cytotoxic compounds kill cells
    dna_ctrl = np.mean([mean_of(Phenotype(count=1), k)[0][0] for k in range(4)])
    dna_damage = np.mean([mean_of(MOA_CLASSES["DNA damage"], k)[0][0] for k in range(4)])
    assert dna_damage > 1.3 * dna_ctrl  # bigger, brighter nuclei


def test_truth_tables(tiny_screen):
    truth = pd.read_csv(tiny_screen / "truth" / "SYN001.tsv", sep="\t")
    assert len(truth) == 96 and truth["blurred"].sum() == 2 and truth["saturated"].sum() == 1
    masks = tifffile.imread(tiny_screen / "truth" / "masks" / "SYN001" / "SYN001_A01_s1_nuclei.tif")
    assert len(np.unique(masks)) - 1 == truth.loc[truth["well"] == "A01", "n_cells"].iloc[0]
