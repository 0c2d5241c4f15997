# Novelty: an autoencoder trained on the screen's control wells (one job for the whole screen;
# Lightning DDP over novelty.trainer.devices GPUs when accelerator is gpu), then every well scored
# (cross-fitted: every control scored out of sample; p-values, BH q-values, hits, plate z, residuals).

from cytoscreen.compute import gpu_resources, threads_per_process

# Resource numbers from novelty.trainer, worked out in the package so the rules stay plain.
_NOVELTY_TRAINER = config["novelty"]["trainer"]
# GPUs per node for the training job, only when training runs on GPUs (accelerator: gpu).
_NOVELTY_GPU_RESOURCES = gpu_resources(_NOVELTY_TRAINER)
_NOVELTY_TRAIN_THREADS = 4
# CPU DDP processes share the job's threads
_NOVELTY_THREADS_PER_PROCESS = threads_per_process(_NOVELTY_TRAINER, _NOVELTY_TRAIN_THREADS)


rule novelty_train:
    input:
        profiles=rules.profiles_select.output.screen,
    output:
        OUT["novelty_model"],
    log:
        f"{LOGS}/novelty/train.log",
    benchmark:
        f"{BENCHMARKS}/novelty/train.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("novelty"),
        threads_per_process=_NOVELTY_THREADS_PER_PROCESS,
    threads: _NOVELTY_TRAIN_THREADS
    resources:
        mem_mb=16000,
        runtime=240,
        **_NOVELTY_GPU_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen novelty train {input.profiles} --config {params.cfg} --out {output} "
        "--threads {params.threads_per_process} > {log} 2>&1"


rule novelty_score:
    input:
        profiles=rules.profiles_select.output.screen,
        checkpoint=rules.novelty_train.output[0],
    output:
        novelty=OUT["novelty"],
        residuals=OUT["residuals"],
    log:
        f"{LOGS}/novelty/score.log",
    benchmark:
        f"{BENCHMARKS}/novelty/score.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("novelty"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen novelty score {input.profiles} --checkpoint {input.checkpoint} "
        "--config {params.cfg} --out {output.novelty} --residuals {output.residuals} "
        "--threads {threads} > {log} 2>&1"


NOVELTY_OUTPUTS = [OUT["novelty"], OUT["residuals"]]
