# cytoscreen: plate images -> QC -> CNN features -> profiles -> novelty hits -> MoA -> reports.
# Every rule is one `cytoscreen` CLI call; all logic lives in the cytoscreen package.
#
#   snakemake --workflow-profile workflow/profiles/default                           # the demo
#   snakemake --workflow-profile workflow/profiles/default --configfile my.yaml      # your screen
#   snakemake --profile workflow/profiles/slurm --configfile my.yaml                 # SLURM cluster

from snakemake.utils import min_version

min_version("8.0")


# The demo's settings apply only when no --configfile is given: a user's config plus the schema
# defaults is the whole config (nothing of the demo leaks into it; see config/README.md).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    plate="|".join(PLATES),


include: "workflow/rules/ingest.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/profiles.smk"
include: "workflow/rules/novelty.smk"
include: "workflow/rules/dose.smk"
include: "workflow/rules/moa.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
