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
        sites=f"{RESULTS}/{{plate}}/sites.parquet",
        qc=f"{RESULTS}/{{plate}}/qc.parquet",
    output:
        f"{RESULTS}/{{plate}}/wells.parquet",
    log:
        f"{RESULTS}/logs/profiles/aggregate/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/profiles/aggregate/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
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
        f"{RESULTS}/{{plate}}/wells.parquet",
    output:
        f"{RESULTS}/{{plate}}/normalized.parquet",
    log:
        f"{RESULTS}/logs/profiles/normalize/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/profiles/normalize/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles normalize {input} {output} --config {params.cfg} > {log} 2>&1"


rule profiles_select:
    input:
        expand(f"{RESULTS}/{{plate}}/normalized.parquet", plate=PLATES),
    output:
        screen=f"{RESULTS}/screen/feature_selected.parquet",
        record=f"{RESULTS}/screen/feature_selected.selection.json",
        table=f"{RESULTS}/screen/feature_selected.selection.tsv",
        plates=expand(f"{RESULTS}/{{plate}}/feature_selected.parquet", plate=PLATES),
    log:
        f"{RESULTS}/logs/profiles/select.log",
    benchmark:
        f"{RESULTS}/benchmarks/profiles/select.tsv"
    params:
        cfg=CONFIGFILE,
        results=results_root,
    threads: 4
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles select {input} {output.screen} --per-plate-dir {params.results} "
        "--config {params.cfg} > {log} 2>&1"


rule profiles_consensus:
    input:
        f"{RESULTS}/screen/feature_selected.parquet",
    output:
        f"{RESULTS}/screen/consensus.parquet",
    log:
        f"{RESULTS}/logs/profiles/consensus.log",
    benchmark:
        f"{RESULTS}/benchmarks/profiles/consensus.tsv"
    params:
        cfg=CONFIGFILE,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen profiles consensus {input} {output} --config {params.cfg} > {log} 2>&1"


PROFILES_OUTPUTS = [
    f"{RESULTS}/screen/consensus.parquet",
    f"{RESULTS}/screen/feature_selected.parquet",
    *expand(f"{RESULTS}/{{plate}}/feature_selected.parquet", plate=PLATES),
]
