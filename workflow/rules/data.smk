# Prepared data for non-bundled datasets. By default a missing folder fails at once with the
# exact `python -m splitmix data prepare ...` command (downloads are a deliberate step: some
# sources are large or need a mirror); with `workflow: {prepare_data: true}` the job prepares it.


rule data:
    output:
        f"{DATA_ROOT}/prepared/{{data_dataset}}/{{domain}}/{{size}}px/{MANIFEST}",
    params:
        command=lambda wc: prepare_command(wc.data_dataset, wc.domain, wc.size),
        prepare=WF["prepare_data"],
        root=lambda wc, output: Path(output[0]).parents[4],
    wildcard_constraints:
        data_dataset=_alternatives(n for n, s in DATASETS.items() if not s.bundled),
        domain=r"[A-Za-z0-9_-]+",
        size=r"\d+",
    priority: 100
    localrule: True
    log:
        "results/logs/data/{data_dataset}/{domain}/{size}px.log",
    message:
        "data: {wildcards.data_dataset}/{wildcards.domain} at {wildcards.size}px is not "
        "prepared ({params.command})"
    conda:
        "../envs/splitmix.yaml"
    shell:
        """
        if [ "{params.prepare}" = "True" ]; then
            python -m splitmix data prepare {wildcards.data_dataset} --domain {wildcards.domain} \
                --size {wildcards.size} --root '{params.root}' > {log} 2>&1
        else
            echo "error: {wildcards.data_dataset}/{wildcards.domain} at {wildcards.size}px is not prepared; run: {params.command}  (or set workflow: {{prepare_data: true}} in the config)" | tee {log} >&2
            exit 1
        fi
        """
