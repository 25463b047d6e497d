# One verl training run per experiment (python -m verl.trainer.main_ppo via `fipo train`): CPU support and the
# transformers rollout for the tiny preset, Ray + FSDP + vLLM on GPUs for the paper presets. verl resumes from
# the run's latest checkpoint by itself, so rerunning an interrupted job continues it; run.json is written
# only when verl exits 0, so an interrupted run is never taken for a finished one.


rule train:
    # {run}: an experiment (at its spec's seed), <experiment>@seed<N> (config `seeds`), or <experiment>@study-seed<N>
    # of the study (workflow/rules/study.smk)
    input:
        train_inputs,
    output:
        f"{RESULTS}/{{preset}}/runs/{{run}}/run.json",
    log:
        f"{RESULTS}/logs/{{preset}}/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{preset}}/train/{{run}}.tsv"
    conda:
        conda_env
    # CPU runs share the cores (config train.cpu_side_by_side, fipo/scheduling.py): a tiny run leaves part of its
    # 2 cores idle, and two side by side finish sooner than two in a row.
    threads: train_threads
    resources:
        mem_mb=lambda wildcards: gpu_resources(run_spec(wildcards))["mem_mb"],
        runtime=lambda wildcards: gpu_resources(run_spec(wildcards))["runtime"],
        gpu=lambda wildcards: gpu_resources(run_spec(wildcards))["gpu"],
        nodes=lambda wildcards: gpu_resources(run_spec(wildcards))["nodes"],
        cpus_per_task=lambda wildcards, threads: gpu_resources(run_spec(wildcards)).get("cpus_per_task", threads),
    params:
        cmd=train_params,
        # not used by the command: a changed spec changes it, and Snakemake reruns a job whose params changed
        fingerprint=run_fingerprint,
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule lengths:
    # per-step response-length quantiles from verl's rollout dumps (Figures 3 and 8)
    input:
        f"{RESULTS}/{{preset}}/runs/{{run}}/run.json",
    output:
        f"{RESULTS}/{{preset}}/runs/{{run}}/length_stats.csv",
    log:
        f"{RESULTS}/logs/{{preset}}/lengths/{{run}}.log",
    conda:
        conda_env
    params:
        cmd=lambda wildcards, output: cli(
            "lengths",
            "--preset",
            PRESET,
            *run_arguments(wildcards.run),
            "--results-dir",
            RESULTS,
            "--out",
            output[0],
        ),
        # not used by the command: a change to the code that computes the statistics redoes them
        code=lambda wildcards: code_digest("fipo.analysis.rollouts"),
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule convert:
    # the checkpoint the preset's evaluation names (last, or best by validation) as a Hugging Face folder
    input:
        f"{RESULTS}/{{preset}}/runs/{{run}}/run.json",
    output:
        directory(f"{RESULTS}/{{preset}}/runs/{{run}}/hf/selected"),
    log:
        f"{RESULTS}/logs/{{preset}}/convert/{{run}}.log",
    conda:
        conda_env
    params:
        cmd=lambda wildcards, output: cli(
            "convert",
            "--preset",
            PRESET,
            *run_arguments(wildcards.run),
            "--which",
            EVAL.checkpoint,
            "--results-dir",
            RESULTS,
            "--out",
            output[0],
        ),
        # not used by the command: evaluation.checkpoint or the converter's code changed reconverts
        selection=convert_fingerprint,
    shell:
        "{params.cmd} > {log:q} 2>&1"
