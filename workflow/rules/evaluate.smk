# Evaluation rows of one finished run: test accuracy per width (and dual-BN lambda), PGD
# robustness, cost, storage, latency and communication, as long rows in eval.csv, and the machine
# the latencies were measured on in eval.json (docs/evaluation.md).


rule evaluate:
    input:
        data=lambda wc: data_manifests(run_cfg(wc)),
        best=f"{RUN_DIR}/{BEST}",
        log=f"{RUN_DIR}/{LOG}",
        comm=f"{RUN_DIR}/{COMM}",
        record=f"{RUN_DIR}/{RUN_RECORD}",
    output:
        rows=f"{RUN_DIR}/{EVAL}",
        record=f"{RUN_DIR}/{EVAL_RECORD}",
    params:
        run=lambda wc, input: os.path.dirname(input.record),
        attack=attack_flag,
        extra=" ".join(WF["evaluate_args"]),
    threads: lambda wc: run_cfg(wc).threads
    resources:
        mem_mb=mem_mb,
        runtime=runtime,
        gpu=gpus,
    log:
        "results/logs/evaluate/{dataset}/{split}/{method}/seed{seed}.log",
    message:
        "evaluate {wildcards.dataset}/{wildcards.split}/{wildcards.method}/seed{wildcards.seed}"
    conda:
        "../envs/splitmix.yaml"
    shell:
        "python -m splitmix evaluate --run {params.run} --out {output.rows} {params.attack} "
        "--no-progress {params.extra} > {log} 2>&1"
