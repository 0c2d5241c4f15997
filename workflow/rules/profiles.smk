# Profiles stage: sites -> wells -> normalized (per plate) -> feature selection over the whole
# screen -> consensus.
#
# Aggregation and normalization are per plate, in one job (normalization uses each plate's own
# negcon wells).
# Feature selection is fitted once on the normalized wells of every plate together, so every plate
# keeps the same columns (a per-plate selection would give plates different column sets that cannot
# be stacked for novelty, consensus or MoA); the same call also writes each plate's rows to
# <plate>/feature_selected.parquet and records the kept/dropped columns per operation beside the
# screen table (feature_selected.selection.json and .tsv).  That table is the hit-calling branch
# (novelty, dose, plate reports).  The MoA branch (profiles.moa: consensus, moa, the screen report)
# normalizes and selects the same wells its own way into screen/moa_profiles.parquet.  Consensus is
# per treatment across plates.


rule profiles_aggregate:
    input:
        sites=rules.features.output[0],
        # with segmentation on, qc_segmented.parquet: QC_low_count sites drop out like any QC_* flag
        qc=SITE_QC,
    output:
        # one process writes both tables (aggregate, then normalize the wells it holds): the
        # same normalized.parquet as a separate normalize job, without a second interpreter start
        wells=OUT["wells"],
        normalized=OUT["normalized"],
    log:
        f"{LOGS}/profiles/aggregate/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/profiles/aggregate/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
        settings=hit_profiles_settings(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles aggregate {input.sites} {output.wells} --qc {input.qc} "
        "--normalized {output.normalized} --config {params.cfg} > {log} 2>&1"


rule profiles_select:
    input:
        normalized=expand(rules.profiles_aggregate.output.normalized, plate=PLATES),
    output:
        screen=OUT["selected"],
        record=OUT["selection_record"],
        table=OUT["selection_table"],
        plates=expand(OUT["plate_selected"], plate=PLATES),
    log:
        f"{LOGS}/profiles/select.log",
    benchmark:
        f"{BENCHMARKS}/profiles/select.tsv"
    params:
        cfg=CONFIGFILE,
        settings=hit_profiles_settings(),
        results=results_root,
    threads: 4
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles select {input.normalized} {output.screen} --per-plate-dir {params.results} "
        "--config {params.cfg} > {log} 2>&1"


# The MoA branch: the same wells, normalized and selected with profiles.moa's keys in place of the
# hit-calling keys above (--chain moa); its fits (screen scale, asinh, sphering) are saved beside
# moa_profiles.parquet. One screen-level normalize job (the plates stacked, each normalized on its own).
rule profiles_moa_normalize:
    input:
        wells=expand(rules.profiles_aggregate.output[0], plate=PLATES),
    output:
        OUT["moa_normalized"],
    log:
        f"{LOGS}/profiles/moa_normalize.log",
    benchmark:
        f"{BENCHMARKS}/profiles/moa_normalize.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("profiles"),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles normalize {input.wells} {output} --chain moa --config {params.cfg} "
        "> {log} 2>&1"


rule profiles_moa_select:
    input:
        normalized=rules.profiles_moa_normalize.output[0],
    output:
        screen=OUT["moa_profiles"],
        record=OUT["moa_selection_record"],
        table=OUT["moa_selection_table"],
    log:
        f"{LOGS}/profiles/moa_select.log",
    benchmark:
        f"{BENCHMARKS}/profiles/moa_select.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("profiles"),
    threads: 4
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles select {input.normalized} {output.screen} --chain moa "
        "--config {params.cfg} > {log} 2>&1"


rule profiles_consensus:
    input:
        profiles=rules.profiles_moa_select.output.screen,
    output:
        OUT["consensus"],
    log:
        f"{LOGS}/profiles/consensus.log",
    benchmark:
        f"{BENCHMARKS}/profiles/consensus.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("profiles"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles consensus {input.profiles} {output} --chain moa --config {params.cfg} "
        "> {log} 2>&1"


PROFILES_OUTPUTS = [
    OUT["consensus"],
    OUT["moa_profiles"],
    OUT["selected"],
    *expand(OUT["plate_selected"], plate=PLATES),
]
