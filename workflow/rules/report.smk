# Tables and figures from evaluation rows alone: deleting figures/<name>/ and rerunning rebuilds
# them without any training or evaluation job.


rule report:
    input:
        rows=expand("{run}/eval.csv", run=run_dirs()),
        records=expand("{run}/run.json", run=run_dirs()),
    output:
        # every figure and every Markdown table (Table 1, claims) with its own caption: the
        # report command writes <name>.rst beside each, and entry.rst includes it
        report(
            directory(REPORT_DIR),
            patterns=["{figure}.png", "{table}.md"],
            caption="../report/entry.rst",
            category=lambda wc: "Figures" if "figure" in wc.keys() else "Tables",
            labels=lambda wc: {k: wc[k] for k in ("figure", "table") if k in wc.keys()},
        ),
    params:
        rows=lambda wc, input: " ".join(f"--rows {r}" for r in input.rows),
        extra=" ".join(WF["report_args"]),
    localrule: True
    log:
        f"results/logs/report/{WF['name']}.log",
    conda:
        "../envs/splitmix.yaml"
    shell:
        "python -m splitmix report {params.rows} --out {output} {params.extra} > {log} 2>&1"
