# cytoscreen: plate images -> QC -> CNN features -> profiles -> novelty hits -> MoA -> reports.
# Every rule is one `cytoscreen` CLI call; all logic lives in the cytoscreen package.
#
#   snakemake --workflow-profile workflow/profiles/default            # local
#   snakemake --profile workflow/profiles/slurm                        # SLURM cluster

from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    plate="|".join(PLATES),


include: "workflow/rules/ingest.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/profiles.smk"
include: "workflow/rules/novelty.smk"
include: "workflow/rules/moa.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/segment.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
