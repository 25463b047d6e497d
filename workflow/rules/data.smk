# Data in verl's parquet format, and the tiny preset's locally made base model.


rule tiny_data:
    output:
        dataset_files(["tiny-train", "tiny-val", "tiny-test"]),
    log:
        f"{RESULTS}/logs/data/tiny.log",
    conda:
        conda_env
    params:
        cmd=lambda wildcards, output: cli("data", "tiny", "--data-dir", DATA),
        # not used by the command: a changed task (fipo/tiny.py) changes it, and Snakemake remakes the data
        task=tiny.data_fingerprint(),
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule aime_data:
    input:
        "data/aime/aime2024.jsonl",
        "data/aime/aime2025.jsonl",
    output:
        dataset_files(["aime2024", "aime2025"]),
    log:
        f"{RESULTS}/logs/data/aime.log",
    conda:
        conda_env
    params:
        cmd=lambda wildcards, output: cli("data", "aime", "--data-dir", DATA),
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule dapo_data:
    output:
        dataset_files(["dapo-math-17k"]),
    log:
        f"{RESULTS}/logs/data/dapo-math-17k.log",
    conda:
        conda_env
    params:
        cmd=lambda wildcards, output: cli(
            "data",
            "dapo",
            "--data-dir",
            DATA,
            *(["--source", config["dapo_source"]] if config.get("dapo_source") else []),
        ),
        # not used by the command: another source is other data (the hub's, or a local copy)
        source=config.get("dapo_source"),
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule tiny_model:
    # tokenizer + 240k-parameter Qwen2 model + 600-step warm start + its form report, written atomically (fipo/tiny.py)
    output:
        f"{RESULTS}/tiny/base_model/tiny_model.json",
    log:
        f"{RESULTS}/logs/data/tiny_model.log",
    benchmark:
        f"{RESULTS}/benchmarks/tiny_model.tsv"
    conda:
        conda_env
    threads: workflow.cores
    params:
        cmd=lambda wildcards, output: cli("tiny-model", "--results-dir", RESULTS),
        # not used by the command: a changed task, spec or warm-start code changes it, and Snakemake remakes the model
        # (computed when Snakemake asks for this job: it parses eight modules, which other presets never need)
        model=lambda wildcards: tiny.model_fingerprint(),
    shell:
        "{params.cmd} > {log:q} 2>&1"
