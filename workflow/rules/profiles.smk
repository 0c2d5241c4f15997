# Profiles stage: sites -> wells -> normalized (per plate) -> feature selection over the whole
# screen -> consensus.
#
# Aggregation and normalization are per plate (normalization uses each plate's own negcon wells).
# Feature selection is fitted once on the normalized wells of every plate together, so every plate
# keeps the same columns (a per-plate selection would give plates different column sets that cannot
# be stacked for novelty, consensus or MoA); the same call also writes each plate's rows to
# <plate>/feature_selected.parquet and records the kept/dropped columns per operation beside the
# screen table (feature_selected.selection.json and .tsv).  Consensus is per treatment across plates.


rule profiles_aggregate:
    input:
        sites=rules.features.output[0],
        qc=rules.qc.output[0],
    output:
        OUT["wells"],
    log:
        f"{LOGS}/profiles/aggregate/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/profiles/aggregate/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("profiles"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles aggregate {input.sites} {output} --qc {input.qc} "
        "--config {params.cfg} > {log} 2>&1"


rule profiles_normalize:
    input:
        wells=rules.profiles_aggregate.output[0],
    output:
        OUT["normalized"],
    log:
        f"{LOGS}/profiles/normalize/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/profiles/normalize/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("profiles"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles normalize {input.wells} {output} --config {params.cfg} > {log} 2>&1"


rule profiles_select:
    input:
        normalized=expand(rules.profiles_normalize.output[0], plate=PLATES),
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
        settings=settings("profiles"),
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


rule profiles_consensus:
    input:
        profiles=rules.profiles_select.output.screen,
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
        "cytoscreen profiles consensus {input.profiles} {output} --config {params.cfg} > {log} 2>&1"


PROFILES_OUTPUTS = [
    OUT["consensus"],
    OUT["selected"],
    *expand(OUT["plate_selected"], plate=PLATES),
]
