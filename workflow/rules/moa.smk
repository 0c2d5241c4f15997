# MoA stage: clusters, UMAP, nearest neighbours (moa.parquet) and benchmark metrics
# (evaluation.json) of the screen's treatments. One job for the whole screen.
#
# moa.representation (config) picks the profiles: the MoA branch's wells (moa_profiles.parquet,
# profiles.moa) with their consensus (profiles, default) or the novelty stage's reconstruction
# residuals (residuals); the command reads it from the config, and the residuals are an input only
# then (moa_residuals in common.smk).


rule moa:
    input:
        profiles=rules.profiles_moa_select.output.screen,
        consensus=rules.profiles_consensus.output[0],
        residuals=moa_residuals,
    output:
        moa=OUT["moa"],
        evaluation=OUT["evaluation"],
    log:
        f"{LOGS}/moa/moa.log",
    benchmark:
        f"{BENCHMARKS}/moa/moa.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("moa"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen moa --config {params.cfg} --profiles {input.profiles} --consensus {input.consensus} "
        "--residuals {input.residuals} --out {output.moa} --evaluation {output.evaluation} > {log} 2>&1"


MOA_OUTPUTS = [OUT["moa"], OUT["evaluation"]]
