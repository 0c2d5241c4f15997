# Features stage: segmentation-free CNN embeddings, one job per plate (one row per site).
#
# features.gpus (config) is the number of GPUs the job asks the scheduler for (resource gpu, which
# the SLURM profile turns into --gpus); features.accelerator/devices tell Lightning what to use.
# The well-level aggregate (wells.parquet) is made by the profiles stage from sites.parquet.


rule features:
    input:
        images=rules.ingest.output[0],
        qc=rules.qc.output[0],
    output:
        OUT["sites"],
    log:
        f"{LOGS}/features/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("features"),
    threads: config["features"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["features"]["gpus"],
    conda:
        CONDA_ENV
    shell:
        "cytoscreen features --config {params.cfg} --plate {wildcards.plate} "
        "--images {input.images} --qc {input.qc} --out {output} --threads {threads} > {log} 2>&1"


FEATURES_OUTPUTS = expand(OUT["sites"], plate=PLATES)
