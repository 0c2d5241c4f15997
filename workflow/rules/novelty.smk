# Novelty: an autoencoder trained on the screen's control wells (one job for the whole screen;
# Lightning DDP over novelty.trainer.devices GPUs when accelerator is gpu), then every well scored
# (conformal p-values against held-out control wells, BH q-values, hit calls, residuals).

from cytoscreen.novelty.resources import gpu_resources, threads_per_process

# Resource numbers from novelty.trainer, worked out in the package so the rules stay plain.
_NOVELTY_TRAINER = config["novelty"]["trainer"]
# GPUs per node for the training job, only when training runs on GPUs (accelerator: gpu).
_NOVELTY_GPU_RESOURCES = gpu_resources(_NOVELTY_TRAINER)
_NOVELTY_TRAIN_THREADS = 4
# CPU DDP processes share the job's threads
_NOVELTY_THREADS_PER_PROCESS = threads_per_process(_NOVELTY_TRAINER, _NOVELTY_TRAIN_THREADS)
NOVELTY_DIR = f"{RESULTS}/screen/novelty"


rule novelty_train:
    input:
        f"{RESULTS}/screen/feature_selected.parquet",
    output:
        f"{NOVELTY_DIR}/model.ckpt",
    log:
        f"{RESULTS}/logs/novelty/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/novelty/train.tsv"
    params:
        cfg=CONFIGFILE,
        threads_per_process=_NOVELTY_THREADS_PER_PROCESS,
    threads: _NOVELTY_TRAIN_THREADS
    resources:
        mem_mb=16000,
        runtime=240,
        **_NOVELTY_GPU_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen novelty train {input} --config {params.cfg} --out {output} "
        "--threads {params.threads_per_process} > {log} 2>&1"


rule novelty_score:
    input:
        profiles=f"{RESULTS}/screen/feature_selected.parquet",
        checkpoint=f"{NOVELTY_DIR}/model.ckpt",
    output:
        novelty=f"{NOVELTY_DIR}/novelty.parquet",
        residuals=f"{NOVELTY_DIR}/residuals.parquet",
    log:
        f"{RESULTS}/logs/novelty/score.log",
    benchmark:
        f"{RESULTS}/benchmarks/novelty/score.tsv"
    params:
        cfg=CONFIGFILE,
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


NOVELTY_OUTPUTS = [
    f"{RESULTS}/screen/novelty/novelty.parquet",
    f"{RESULTS}/screen/novelty/residuals.parquet",
]
