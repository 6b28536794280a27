# One training run = one job. The run's resolved config hash is a param, so editing the config
# re-runs exactly the runs whose settings changed (Snakemake's params rerun trigger).
#
# checkpoint.pt is deliberately not an output: Snakemake deletes the outputs of a job before it
# starts, and a killed job's partial files must not pass for results. The job starts the run
# afresh (--restart) because best.pt, which a resume would need, is one of those outputs; to
# continue a long run by hand, call the same command without --restart.


rule train:
    input:
        data=lambda wc: data_manifests(run_cfg(wc)),
    output:
        best=f"{RUN_DIR}/best.pt",
        log=f"{RUN_DIR}/log.csv",
        comm=f"{RUN_DIR}/comm.csv",
        record=f"{RUN_DIR}/run.json",
    params:
        experiment=EXPERIMENT,
        config_hash=lambda wc: run_cfg(wc).config_hash(),
        out=lambda wc, output: os.path.dirname(output.record),
    threads: lambda wc: run_cfg(wc).threads
    resources:
        mem_mb=mem_mb,
        runtime=runtime,
        gpu=gpus,
    log:
        "results/logs/train/{dataset}/{split}/{method}/seed{seed}.log",
    conda:
        "../envs/splitmix.yaml"
    shell:
        "python -m splitmix train --config {params.experiment} --dataset {wildcards.dataset} "
        "--split {wildcards.split} --method {wildcards.method} --seed {wildcards.seed} "
        "--out {params.out} --restart --no-progress > {log} 2>&1"
