# `fipo doctor` before every GPU job of a GPU preset (training with trainer.device cuda, evaluation with vLLM): the
# job waits for its own marker, written only when every check passes; otherwise the doctor's log says what fails and
# how to fix it, and no GPU job starts. One temporary marker per job: it is made again before the job whenever the
# job has to run, and never makes a finished job run again (a marker shared by several jobs would: remaking it for
# one would date the others). The tiny CPU preset has no doctor: none of its checks concern a CPU run.


rule doctor:
    input:
        doctor_inputs,
    output:
        temp(f"{RESULTS}/{{preset}}/doctor/{{job}}.ok"),
    log:
        f"{RESULTS}/logs/{{preset}}/doctor/{{job}}.log",
    wildcard_constraints:
        job=f"train/(?:{one_of(SPECS)})|eval/(?:{one_of(SPECS)})/(?:{one_of(EVAL.benchmarks)})"
        f"|released/(?:{one_of(EVAL.benchmarks)})",
    # before any other job that is ready, so that a machine that cannot run the preset fails within minutes
    priority: 100
    conda:
        conda_env
    resources:
        gpu=doctor_gpus,
        nodes=1,
        mem_mb=8000,
        runtime=15,
    params:
        cmd=doctor_params,
    shell:
        "{params.cmd} > {log:q} 2>&1"
