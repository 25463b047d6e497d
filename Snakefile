# FIPO Workbench pipeline: data -> verl training -> checkpoint conversion -> evaluation -> notebooks -> index.
# `snakemake --cores all` runs everything for config/config.yaml's preset (tiny, on CPU, by default);
# `snakemake --config preset=qwen2.5-7b-math --profile workflow/profiles/slurm` at paper scale. See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    preset=PRESET,
    experiment="|".join(SPECS),
    benchmark="|".join(EVAL.benchmarks),


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        index_html(),
        all_eval_summaries(),
    default_target: True
