# Evaluation of each run's selected checkpoint: n samples per problem (32, AIME practice), vLLM on GPUs or
# transformers on CPU (the preset's evaluation section). `fipo eval` resumes from its per-sample file.


rule evaluate:
    input:
        f"{RESULTS}/{{preset}}/runs/{{run}}/hf/selected",
        lambda wildcards: dataset_files([wildcards.benchmark]),
        lambda wildcards: eval_doctor(f"eval/{parse_run_name(wildcards.run)[0]}/{wildcards.benchmark}"),
    output:
        f"{RESULTS}/{{preset}}/eval/{{run}}/{{benchmark}}/summary.json",
    log:
        f"{RESULTS}/logs/{{preset}}/eval/{{run}}-{{benchmark}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{preset}}/eval/{{run}}-{{benchmark}}.tsv"
    conda:
        conda_env
    threads: lambda wildcards: 1 if EVAL.backend == "vllm" else workflow.cores
    resources:
        gpu=lambda wildcards: EVAL.tensor_parallel_size if EVAL.backend == "vllm" else 0,
        mem_mb=lambda wildcards: 200_000 if EVAL.backend == "vllm" else CPU_EVALUATION_MEM_MB,
        runtime=lambda wildcards: (config.get("eval") or {}).get("runtime_min") or 240,
    params:
        cmd=eval_params,
        # not used by the command: a changed evaluation setting (fipo.determines) or sampling code re-evaluates
        settings=eval_fingerprint,
    shell:
        "{params.cmd} > {log:q} 2>&1"
