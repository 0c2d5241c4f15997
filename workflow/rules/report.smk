# Reports: one self-contained HTML page per plate and an index page for the screen.
#
# The rules take every stage's outputs as inputs (well profiles, novelty scores, MoA table,
# evaluation, screen profiles), so the reports come last and are redone when a stage reruns.  By
# hand, every input but --qc is optional and a section whose input is missing says "Stage not run".
# With segmentation on, the QC table is qc_segmented.parquet (counts and QC_low_count): the plate
# report then shows a cell-count heatmap instead of the DNA signal.

REPORT_QC = (
    f"{RESULTS}/{{plate}}/qc_segmented.parquet"
    if config.get("segment", {}).get("enabled", False)
    else f"{RESULTS}/{{plate}}/qc.parquet"
)


rule report_plate:
    input:
        qc=REPORT_QC,
        images=f"{RESULTS}/{{plate}}/images.parquet",
        wells=f"{RESULTS}/{{plate}}/wells.parquet",
        novelty=f"{RESULTS}/screen/novelty/novelty.parquet",
    output:
        report(
            f"{REPORTS}/{{plate}}.html",
            caption="../report/plate.rst",
            category="Plate reports",
            labels={"plate": "{plate}"},
        ),
    log:
        f"{RESULTS}/logs/report/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen report plate --config {params.cfg} --plate {wildcards.plate} --qc {input.qc} "
        "--images {input.images} --wells {input.wells} --novelty {input.novelty} --out {output} "
        "> {log} 2>&1"


rule report_index:
    input:
        qc=expand(REPORT_QC, plate=PLATES),
        plates=expand(f"{REPORTS}/{{plate}}.html", plate=PLATES),
        novelty=f"{RESULTS}/screen/novelty/novelty.parquet",
        moa=f"{RESULTS}/screen/moa.parquet",
        evaluation=f"{RESULTS}/screen/evaluation.json",
        profiles=f"{RESULTS}/screen/feature_selected.parquet",
    output:
        report(
            f"{REPORTS}/index.html",
            caption="../report/index.rst",
            category="Screen report",
            labels={"report": "screen index"},
        ),
    log:
        f"{RESULTS}/logs/report/index.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/index.tsv"
    params:
        cfg=CONFIGFILE,
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


REPORT_OUTPUTS = expand(f"{REPORTS}/{{plate}}.html", plate=PLATES) + [f"{REPORTS}/index.html"]
