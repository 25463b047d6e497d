# One papermill-executed notebook per figure and table (notebooks/<id>.ipynb; fipo/analysis/execute.py runs
# papermill on a kernel reached over Unix sockets), the executed copy kept beside its outputs; then the index
# page. Targets: `figures`, `tables`, one per artifact (`fig03`, `table5`, ...), and one per ablation family of
# the preset (`ablation_tau`, ...).


rule figure:
    input:
        artifact_inputs,
    output:
        report(
            f"{RESULTS}/{{preset}}/figures/{{artifact}}.png",
            caption="../report/artifact.rst",
            category="Figures",
        ),
        f"{RESULTS}/{{preset}}/figures/{{artifact}}.pdf",
        f"{RESULTS}/{{preset}}/notebooks/{{artifact}}.ipynb",
    log:
        f"{RESULTS}/logs/{{preset}}/notebooks/{{artifact}}.log",
    wildcard_constraints:
        artifact="fig[0-9]+|influence",
    conda:
        conda_env
    params:
        cmd=papermill,
        caption=artifact_caption,
        code=artifact_code,
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule table:
    input:
        artifact_inputs,
    output:
        report(
            f"{RESULTS}/{{preset}}/tables/{{artifact}}.csv",
            caption="../report/artifact.rst",
            category="Tables",
        ),
        f"{RESULTS}/{{preset}}/tables/{{artifact}}.md",
        f"{RESULTS}/{{preset}}/tables/{{artifact}}.tex",
        f"{RESULTS}/{{preset}}/notebooks/{{artifact}}.ipynb",
    log:
        f"{RESULTS}/logs/{{preset}}/notebooks/{{artifact}}.log",
    wildcard_constraints:
        artifact="table[0-9]+",
    conda:
        conda_env
    params:
        cmd=papermill,
        caption=artifact_caption,
        code=artifact_code,
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule index:
    input:
        "notebooks/index.ipynb",
        [f for a in ARTIFACTS for f in artifact_files(a.id)],
        # the study's report when `snakemake study` made it: a newer one rebuilds the index that links it
        [STUDY_REPORT] if os.path.isfile(STUDY_REPORT) else [],
    output:
        html=f"{RESULTS}/{PRESET}/index.html",
        notebook=f"{RESULTS}/{PRESET}/notebooks/index.ipynb",
    log:
        f"{RESULTS}/logs/{PRESET}/notebooks/index.log",
    conda:
        conda_env
    params:
        cmd=lambda wildcards, output: shell_line(
            PYTHON,
            "-m",
            "fipo.analysis.execute",
            "notebooks/index.ipynb",
            output.notebook,
            "-r",
            "preset",
            PRESET,
            "-r",
            "results_dir",
            RESULTS,
            "-r",
            "out",
            output.html,
            "-r",
            "seeds",
            seeds_parameter(),
        ),
        code=lambda wildcards: code_digest("notebooks/index.ipynb"),
    shell:
        "{params.cmd} > {log:q} 2>&1"


rule figures:
    input:
        [f for a in FIGURES for f in artifact_files(a)],


rule tables:
    input:
        [f for a in TABLES for f in artifact_files(a)],


for _artifact in ARTIFACTS:

    rule:
        name:
            _artifact.id
        input:
            artifact_files(_artifact.id),


for _family, _members in ABLATIONS.items():

    rule:
        # the family's runs and evaluations, and every artifact that compares only runs of the family
        name:
            _family
        input:
            [run_record(run) for run in runs_of_all(_members)],
            all_eval_summaries(_members),
            [
                f
                for a in ARTIFACTS
                if a.experiments and set(a.experiments) <= set(_members)
                for f in artifact_files(a.id)
            ],
