# Tables and figures from evaluation rows alone: deleting figures/<name>/ and rerunning rebuilds
# them without any training or evaluation job.


def claims_file():
    """workflow.claims as a path (working directory first, then this repository), or None."""
    name = WF["claims"]
    if name is None:
        return None
    for path in (Path(name), REPO / name):
        if path.is_file():
            return str(path)
    raise WorkflowError(
        f"config error in {_config_source()} at workflow.claims: {name!r} does not exist (in the "
        f"working directory or in {REPO}); name a claims file (docs/claims.md) or set it to null"
    )


CLAIMS = claims_file()


rule report:
    input:
        rows=expand("{run}/eval.csv", run=run_dirs()),
        records=expand("{run}/run.json", run=run_dirs()),
        claims=CLAIMS or [],
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
        claims=f"--claims {CLAIMS}" if CLAIMS else "--claims none",
        extra=" ".join(WF["report_args"]),
    localrule: True
    log:
        f"results/logs/report/{WF['name']}.log",
    conda:
        "../envs/splitmix.yaml"
    shell:
        "python -m splitmix report {params.rows} {params.claims} --out {output} {params.extra} "
        "> {log} 2>&1"


# The report writes its summary (claims verdicts, under-trained runs) to summary.txt; print it as
# the run's last words so nobody has to open the folder to learn whether the claims held.
onsuccess:
    summary = Path(REPORT_DIR) / "summary.txt"
    if summary.is_file():
        print(summary.read_text().rstrip("\n"))
