# One training run = one job. The run's resolved config hash is a param, so editing the config
# re-runs exactly the runs whose settings changed (Snakemake's params rerun trigger).
#
# The job reads results/config/runs/<config_hash>.yaml, the run's resolved values in a file that
# is named by them and never rewritten, and the CLI refuses to train if what it resolves has
# another hash: a second `snakemake` parsing another config cannot change what this job trains.
#
# Resume: Snakemake deletes a job's declared outputs before it (re)starts, so the resume state
# (checkpoint.pt and checkpoint-best.pt) is deliberately not an output. An interrupted job, rerun,
# continues from its last checkpoint and rebuilds best.pt and the logs from it (bit-identical to
# an uninterrupted run); a checkpoint of an earlier config of the run is discarded. When the job
# succeeds the resume state is deleted: a finished run keeps one model file, best.pt.


rule train:
    input:
        data=lambda wc: data_manifests(run_cfg(wc)),
    output:
        best=f"{RUN_DIR}/{BEST}",
        log=f"{RUN_DIR}/{LOG}",
        comm=f"{RUN_DIR}/{COMM}",
        record=f"{RUN_DIR}/{RUN_RECORD}",
    params:
        experiment=lambda wc: run_config_path(run_cfg(wc)),
        config_hash=lambda wc: run_cfg(wc).config_hash(),
        out=lambda wc, output: os.path.dirname(output.record),
    threads: lambda wc: run_cfg(wc).threads
    priority: train_priority
    resources:
        mem_mb=mem_mb,
        runtime=runtime,
        gpu=gpus,
    log:
        "results/logs/train/{dataset}/{split}/{method}/seed{seed}.log",
    message:
        "train {wildcards.dataset}/{wildcards.split}/{wildcards.method}/seed{wildcards.seed} "
        "(log: {log}; {ETA})"
    conda:
        "../envs/splitmix.yaml"
    shell:
        "python -m splitmix train --config {params.experiment} --dataset {wildcards.dataset} "
        "--split {wildcards.split} --method {wildcards.method} --seed {wildcards.seed} "
        "--out {params.out} --expect-hash {params.config_hash} > {log} 2>&1 "
        "&& rm -f " + " ".join(f"{{params.out}}/{name}" for name in RESUME_STATE)
