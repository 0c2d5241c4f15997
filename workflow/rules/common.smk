# Bookkeeping: the validated config (the package's schema holds every default), the plate table, the
# one table of output paths, and the helpers the rules name. Nothing here writes a file: parsing the
# workflow (a dry run, --lint) leaves results/ as it is.

import sys
from pathlib import Path

from cytoscreen.config import prepare_workflow, section_digest, write_resolved_config
from cytoscreen.errors import CytoscreenError

# All rules run the same cytoscreen package. With --use-conda, this one environment (relative to
# workflow/rules/) is built once and shared by all rules.
CONDA_ENV = "../../environment.yml"

try:
    # validates `config` in place (schema defaults filled in), reads the plate table, and checks
    # each plate's layout and the backbones, so a wrong name stops the run before any job starts
    PLATE_TABLE = prepare_workflow(
        config, source=", ".join(map(str, workflow.overwrite_configfiles)) or "config"
    )
except CytoscreenError as err:
    sys.exit(f"cytoscreen: {err}")

PLATES = list(PLATE_TABLE.index)
RESULTS = config["results"]
REPORTS = config["reports"]
SEGMENT_ENABLED = config["segment"]["enabled"]

# Every output path of the workflow, named once. A rule's `output:` takes its paths from here, its
# `input:` names the producing rule's output (rules.<name>.output), or OUT where the producer is
# optional or defined later.
OUT = {
    # per plate
    "images": f"{RESULTS}/{{plate}}/images.parquet",
    "qc": f"{RESULTS}/{{plate}}/qc.parquet",
    "sites": f"{RESULTS}/{{plate}}/sites.parquet",
    "segmentation": f"{RESULTS}/{{plate}}/segmentation.parquet",
    "masks": f"{RESULTS}/{{plate}}/masks",
    "qc_segmented": f"{RESULTS}/{{plate}}/qc_segmented.parquet",
    "crops": f"{RESULTS}/{{plate}}/crops.zarr",
    "crops_index": f"{RESULTS}/{{plate}}/crops.parquet",
    "single_cell_sites": f"{RESULTS}/{{plate}}/single_cell_sites.parquet",
    "single_cell_wells": f"{RESULTS}/{{plate}}/single_cell_wells.parquet",
    "wells": f"{RESULTS}/{{plate}}/wells.parquet",
    "normalized": f"{RESULTS}/{{plate}}/normalized.parquet",
    "plate_selected": f"{RESULTS}/{{plate}}/feature_selected.parquet",
    # whole screen
    "selected": f"{RESULTS}/screen/feature_selected.parquet",
    "selection_record": f"{RESULTS}/screen/feature_selected.selection.json",
    "selection_table": f"{RESULTS}/screen/feature_selected.selection.tsv",
    # the MoA branch (profiles.moa): its own normalization and selection of the same wells
    "moa_normalized": f"{RESULTS}/screen/moa_normalized.parquet",
    "moa_profiles": f"{RESULTS}/screen/moa_profiles.parquet",
    "moa_selection_record": f"{RESULTS}/screen/moa_profiles.selection.json",
    "moa_selection_table": f"{RESULTS}/screen/moa_profiles.selection.tsv",
    "consensus": f"{RESULTS}/screen/consensus.parquet",
    "novelty_model": f"{RESULTS}/screen/novelty/model.ckpt",
    "novelty": f"{RESULTS}/screen/novelty/novelty.parquet",
    "residuals": f"{RESULTS}/screen/novelty/residuals.parquet",
    "dose": f"{RESULTS}/screen/novelty/dose.parquet",
    "moa": f"{RESULTS}/screen/moa.parquet",
    "evaluation": f"{RESULTS}/screen/evaluation.json",
    # reports
    "plate_report": f"{REPORTS}/{{plate}}.html",
    "index_report": f"{REPORTS}/index.html",
}
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

# The per-site QC table downstream stages read: with segmentation on, qc.parquet plus the counts
# and QC_low_count; otherwise qc.parquet itself.
SITE_QC = OUT["qc_segmented"] if SEGMENT_ENABLED else OUT["qc"]


def plate_platemap(wildcards):
    """The platemap TSV of a plate (an input, so editing it re-runs the plate's ingest)."""
    return PLATE_TABLE.loc[wildcards.plate, "platemap"]


def results_root(wildcards, output):
    """The results root, derived from a screen-level output (<results>/screen/<file>)."""
    return str(Path(output[0]).parents[1])


def settings(*sections):
    """A param that changes exactly when one of these config sections does (a rerun trigger)."""
    return section_digest(config, *sections)


def hit_profiles_settings():
    """The hit-calling profiles' rerun trigger: the profiles section without its moa sub-chain."""
    hits = {k: v for k, v in config["profiles"].items() if k != "moa"}
    return section_digest({"profiles": hits}, "profiles")


def ingest_settings(wildcards):
    """Ingest's rerun trigger: its config sections and the plate's row of the plate table."""
    row = PLATE_TABLE.loc[wildcards.plate].to_dict()
    return section_digest(config, "channels", "layouts", "ingest", extra=row)


def moa_residuals(wildcards):
    """The novelty residuals, an input of moa only with moa.representation: residuals."""
    return OUT["residuals"] if config["moa"]["representation"] == "residuals" else []


def all_outputs():
    """Every stage's final outputs: the lists named <STAGE>_OUTPUTS in the rule files."""
    outputs = []
    for name in STAGE_OUTPUT_LISTS:
        outputs.extend(globals().get(name, []))
    return outputs


STAGE_OUTPUT_LISTS = (
    "INGEST_OUTPUTS",
    "FEATURES_OUTPUTS",
    "SEGMENT_OUTPUTS",
    "PROFILES_OUTPUTS",
    "NOVELTY_OUTPUTS",
    "MOA_OUTPUTS",
    "REPORT_OUTPUTS",
    "DOSE_OUTPUTS",
    "EXPORT_OUTPUTS",
)

# The --config of every cytoscreen call: the validated config, written when a run starts (onstart
# runs only when jobs are about to run: never for a dry run or --lint, never when parsing). A rule
# passes it as a param beside its `settings` (the digest of the sections its command reads), so
# what a config change concerns reruns, and nothing else does.
CONFIGFILE = f"{RESULTS}/.config/config.yaml"


onstart:
    write_resolved_config(config, CONFIGFILE)
