# The authors' released checkpoint (a preset's `released:` model, e.g. QwenPilot/FIPO_32B for qwen2.5-32b), evaluated
# with the preset's evaluation settings and tabulated beside the paper's Table 1 row: a check of the evaluation harness
# before anything is trained. `snakemake --cores all released --config preset=qwen2.5-32b`.

if RELEASED:

    rule released_model:
        # into the Hugging Face cache once, on the machine snakemake runs on (GPU nodes often cannot reach the hub)
        output:
            released_record(),
        log:
            f"{RESULTS}/logs/{PRESET}/released/model.log",
        localrule: True
        conda:
            conda_env
        params:
            cmd=cli("fetch-model", RELEASED.model, "--revision", RELEASED.revision, "--record", released_record()),
        shell:
            "{params.cmd} > {log:q} 2>&1"

    rule evaluate_released:
        input:
            released_record(),
            lambda wildcards: dataset_files([wildcards.benchmark]),
            lambda wildcards: eval_doctor(f"released/{wildcards.benchmark}"),
        output:
            f"{RESULTS}/{{preset}}/released/eval/{{benchmark}}/summary.json",
        log:
            f"{RESULTS}/logs/{{preset}}/released/eval-{{benchmark}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{preset}}/released/eval-{{benchmark}}.tsv"
        conda:
            conda_env
        threads: lambda wildcards: 1 if EVAL.backend == "vllm" else workflow.cores
        resources:
            gpu=lambda wildcards: EVAL.tensor_parallel_size if EVAL.backend == "vllm" else 0,
            mem_mb=lambda wildcards: 200_000 if EVAL.backend == "vllm" else CPU_EVALUATION_MEM_MB,
            runtime=lambda wildcards: (config.get("eval") or {}).get("runtime_min") or 240,
        params:
            cmd=lambda wildcards, output: eval_command(
                wildcards.benchmark,
                Path(output[0]).parent,
                "--model",
                RELEASED.model,
                "--revision",
                RELEASED.revision,
            ),
            # not used by the command: the evaluation's settings and code (fipo.determines)
            settings=lambda wildcards: fingerprint(EVALUATE, EVAL, RELEASED, code=code_digest("fipo.eval.runner")),
        shell:
            "{params.cmd} > {log:q} 2>&1"

    rule released_table:
        input:
            [f"{RESULTS}/{PRESET}/released/eval/{b}/summary.json" for b in EVAL.benchmarks],
        output:
            report(released_tables()[0], caption="../report/artifact.rst", category="Tables"),
            *released_tables()[1:],
        log:
            f"{RESULTS}/logs/{PRESET}/released/table.log",
        conda:
            conda_env
        params:
            cmd=lambda wildcards, output: cli("released-table", "--preset", PRESET, "--results-dir", RESULTS),
            # not used by the command: the paper's row it is compared with, and the table's code
            settings=lambda wildcards: fingerprint(REPORT, RELEASED, code=code_digest("fipo.analysis.released")),
            caption=f"The released {RELEASED.model} evaluated by this harness beside the paper's Table 1 "
            f"{RELEASED.paper_row.upper()} row (preset {PRESET}).",
        shell:
            "{params.cmd} > {log:q} 2>&1"

    rule released:
        input:
            released_tables(),

else:

    rule released:
        input:
            no_released_model,
