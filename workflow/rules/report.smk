# Reports: one self-contained HTML page per plate and an index page for the screen.
#
# The rules take every stage's outputs as inputs (well profiles, novelty scores, dose curves, MoA
# table, evaluation, screen profiles), so the reports come last and are redone when a stage reruns.  By
# hand, every input but --qc is optional and a section whose input is missing says "Stage not run".
# With segmentation on, the QC table is qc_segmented.parquet (SITE_QC: counts and QC_low_count): the
# plate report then shows a cell-count heatmap instead of the DNA signal.


rule report_plate:
    input:
        qc=SITE_QC,
        images=rules.ingest.output[0],
        wells=rules.profiles_aggregate.output[0],
        novelty=rules.novelty_score.output.novelty,
        dose=rules.dose.output[0],
    output:
        report(
            OUT["plate_report"],
            caption="../report/plate.rst",
            category="Plate reports",
            labels={"plate": "{plate}"},
        ),
    log:
        f"{LOGS}/report/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/report/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("report"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen report plate --config {params.cfg} --plate {wildcards.plate} --qc {input.qc} "
        "--images {input.images} --wells {input.wells} --novelty {input.novelty} "
        "--dose {input.dose} --out {output} > {log} 2>&1"


rule report_index:
    input:
        qc=expand(SITE_QC, plate=PLATES),
        plates=expand(rules.report_plate.output[0], plate=PLATES),
        novelty=rules.novelty_score.output.novelty,
        moa=rules.moa.output.moa,
        evaluation=rules.moa.output.evaluation,
        profiles=rules.profiles_moa_select.output.screen,
    output:
        report(
            OUT["index_report"],
            caption="../report/index.rst",
            category="Screen report",
            labels={"report": "screen index"},
        ),
    log:
        f"{LOGS}/report/index.log",
    benchmark:
        f"{BENCHMARKS}/report/index.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("report"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen report screen --config {params.cfg} --qc {input.qc} --plate-reports {input.plates} "
        "--novelty {input.novelty} --moa {input.moa} --evaluation {input.evaluation} "
        "--profiles {input.profiles} --out {output} > {log} 2>&1"


REPORT_OUTPUTS = expand(OUT["plate_report"], plate=PLATES) + [OUT["index_report"]]
