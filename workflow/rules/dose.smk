# Dose response: per compound, a Spearman trend test of the report's readout against dose and a
# 4-parameter log-logistic EC50 (cytoscreen.dose). The dose is the platemap's concentration, or its
# dose_index column for compounds without concentrations; compounds at a single dose get no row, so
# a screen without dose series gives an empty table. The plate reports plot the fitted curves.


rule dose:
    input:
        novelty=rules.novelty_score.output.novelty,
    output:
        OUT["dose"],
    log:
        f"{LOGS}/dose/dose.log",
    benchmark:
        f"{BENCHMARKS}/dose/dose.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("report"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen dose {input.novelty} {output} --config {params.cfg} > {log} 2>&1"


DOSE_OUTPUTS = [OUT["dose"]]
