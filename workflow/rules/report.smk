# Tables and figures from evaluation rows alone: deleting figures/<name>/ and rerunning rebuilds
# them without any training or evaluation job.


# workflow.claims, resolved to files (common.smk: claims_files); [] = no claims check
CLAIMS = claims_files(WF["claims"])


rule report:
    input:
        rows=expand(f"{{run}}/{EVAL}", run=run_dirs()),
        records=expand(f"{{run}}/{RUN_RECORD}", run=run_dirs()),
        measured=expand(f"{{run}}/{EVAL_RECORD}", run=run_dirs()),
        claims=CLAIMS,
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
        claims=" ".join(f"--claims {c}" for c in CLAIMS) or "--claims none",
        extra=" ".join(WF["report_args"]),
    localrule: True
    log:
        f"results/logs/report/{WF['name']}.log",
    # one line instead of Snakemake's listing of every input (80 files on the quick default)
    message:
        f"report {REPORT_DIR}/ from {len(RUNS)} runs (log: {{log}})"
    conda:
        "../envs/splitmix.yaml"
    shell:
        "python -m splitmix report {params.rows} {params.claims} --out {output} {params.extra} "
        "> {log} 2>&1"


# The one onsuccess handler of the workflow (Snakemake keeps only the last one defined): the done
# line, then the summary the report wrote (claims verdicts, under-trained runs), so nobody has to
# open the folder to learn whether the claims held.
onsuccess:
    print(f"done: {len(RUNS)} runs in results/, report in {REPORT_DIR}/")
    summary = Path(REPORT_DIR) / "summary.txt"
    if summary.is_file():
        print(summary.read_text().rstrip("\n"))
