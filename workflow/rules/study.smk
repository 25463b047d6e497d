# The laptop-scale study: the study's experiments at each of its seeds (train jobs of runs
# <experiment>@study-seed<N>, trained with study.overrides: longer than the figures' runs), then `fipo study-report`:
# the paper's claims, each with its across-seed interval, paired test and verdict. `snakemake --cores all study`.


rule study:
    input:
        [run_record(run) for run in STUDY_RUNS],
    output:
        STUDY_REPORT,
    log:
        f"{RESULTS}/logs/{PRESET}/study.log",
    conda:
        conda_env
    params:
        cmd=lambda wildcards, output: cli(
            "study-report",
            "--preset",
            PRESET,
            "--results-dir",
            RESULTS,
            "--experiments",
            *STUDY_EXPERIMENTS,
            "--seeds",
            *map(str, STUDY_SEEDS),
            "--window",
            str(STUDY_WINDOW),
            "--out",
            output[0],
        ),
        # not used by the command: a change to the report's code or settings (study.window) remakes the report
        settings=report_settings,
    shell:
        "{params.cmd} > {log:q} 2>&1"
