# MoA stage: clusters, UMAP, nearest neighbours (moa.parquet) and benchmark metrics
# (evaluation.json) of the screen's treatments. One job for the whole screen.
#
# moa.representation (config) picks the profiles: the feature-selected wells with their consensus
# (profiles, default) or the novelty stage's reconstruction residuals (residuals).


MOA_REPRESENTATION = config.get("moa", {}).get("representation", "profiles")
MOA_INPUT = (
    {"residuals": f"{RESULTS}/screen/novelty/residuals.parquet"}
    if MOA_REPRESENTATION == "residuals"
    else {
        "profiles": f"{RESULTS}/screen/feature_selected.parquet",
        "consensus": f"{RESULTS}/screen/consensus.parquet",
    }
)
MOA_ARGS = " ".join(f"--{name} {{input.{name}}}" for name in MOA_INPUT)


rule moa:
    input:
        **MOA_INPUT,
    output:
        moa=f"{RESULTS}/screen/moa.parquet",
        evaluation=f"{RESULTS}/screen/evaluation.json",
    log:
        f"{RESULTS}/logs/moa/moa.log",
    benchmark:
        f"{RESULTS}/benchmarks/moa/moa.tsv"
    params:
        cfg=CONFIGFILE,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        f"cytoscreen moa --config {{params.cfg}} {MOA_ARGS} "
        "--out {output.moa} --evaluation {output.evaluation} > {log} 2>&1"


MOA_OUTPUTS = [f"{RESULTS}/screen/moa.parquet", f"{RESULTS}/screen/evaluation.json"]
