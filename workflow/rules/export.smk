# Export (optional): profile tables as AnnData .h5ad files beside their Parquet files, for scanpy and
# the scverse tools. `export.anndata` lists the tables: per plate sites, wells, normalized,
# feature_selected (<results>/<plate>/<table>.h5ad); for the screen screen_feature_selected and
# screen_consensus (<results>/screen/<table>.h5ad). With an empty list EXPORT_OUTPUTS is empty and
# the rule is never run.

_EXPORT_PLATE_TABLES = ("sites", "wells", "normalized", "feature_selected")
_EXPORT_TABLES = list(config["export"]["anndata"])


def _export_outputs():
    outputs = []
    for table in _EXPORT_TABLES:
        if table.startswith("screen_"):
            outputs.append(f"{RESULTS}/screen/{table[len('screen_'):]}.h5ad")
        else:
            outputs.extend(expand(f"{RESULTS}/{{plate}}/{table}.h5ad", plate=PLATES))
    return outputs


rule export_anndata:
    input:
        f"{RESULTS}/{{where}}/{{table}}.parquet",
    output:
        f"{RESULTS}/{{where}}/{{table}}.h5ad",
    wildcard_constraints:
        where="|".join([*PLATES, "screen"]),
        table="|".join(_EXPORT_PLATE_TABLES + ("consensus",)),
    log:
        f"{RESULTS}/logs/export/anndata_{{where}}_{{table}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export/anndata_{{where}}_{{table}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen export anndata {input} {output} > {log} 2>&1"


EXPORT_OUTPUTS = _export_outputs()
