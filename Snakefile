# splitmix-bench: config -> data -> one training run per job -> evaluation rows -> report.
#
#   snakemake --cores 2                                   quick default on the bundled data
#   snakemake -n --configfile config/paper.yaml           what the paper grid would run
#   snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml
#
# See docs/workflow.md. A --configfile replaces config/config.yaml (it is not merged into it):
# the default is read only when no --configfile is given.

if not workflow.config_settings.configfiles:

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


# onsuccess: workflow/rules/report.smk (the done line, then the report's claims summary)


onerror:
    print(
        "stopped: a job failed or was interrupted (its log is under results/logs/). Rerun the "
        "same command to continue; interrupted training resumes from its last checkpoint. "
        "After a hard kill (SIGKILL, a lost terminal) unlock first: snakemake --unlock"
    )
