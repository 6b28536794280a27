# splitmix-bench: config -> data -> one training run per job -> evaluation rows -> report.
#
#   snakemake --cores 2                                   quick default on the bundled data
#   snakemake -n --configfile config/paper.yaml           what the paper grid would run
#   snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml
#
# See docs/workflow.md. A --configfile replaces config/config.yaml (it is not merged into it).

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT_DIR,
