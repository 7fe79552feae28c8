"""A tiny training run on a few phantoms, for the tests of options that reach the trainer.

One place for the phantoms, the YAML and the call, so each test states only its option and
what it checks. A run takes a few seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

#: The parts of a tiny ``small`` config that every such run shares; a test adds its own lines.
TINY_BASE = "base: small\nembed_dim: 32\n"
#: Batches of 4 64 px crops, a short warm-up and no loader processes: a few steps in seconds, for
#: the tests of loss terms (a test adds its ``loss:`` line).
TINY_LOSS_RUN = (
    "optim: {batch_size: 4, warmup_steps: 1, lr: 0.001}\n"
    "data: {resize: 72, crop: 64, num_workers: 0, val_fraction: 0.2}\n"
)


def tiny_run(folder: Path, config_lines: str, max_steps: int, n_phantoms: int = 12, **train_options):
    """Write ``n_phantoms`` 64 px phantoms and a config (``TINY_BASE`` + ``config_lines``) into
    ``folder``, train ``max_steps`` steps without a progress bar, TensorBoard into ``folder/tb``.

    Returns:
        The :class:`afloc_training.trainer.TrainResult`.
    """
    from afloc_training.phantoms import write_phantom_datastore
    from afloc_training.trainer import train

    write_phantom_datastore(folder / "data", n_phantoms, seed=0, size=64)
    config = folder / "tiny.yaml"
    config.write_text(TINY_BASE + config_lines)
    return train(folder / "data", folder / "ckpt", config=config, max_steps=max_steps, progress=False,
                 log_dir=folder / "tb", **train_options)


def logged_scalars(folder: Path, names: tuple[str, ...]) -> dict[str, list[float]]:
    """The ``train/<name>`` TensorBoard scalars a :func:`tiny_run` in ``folder`` logged, step by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((folder / "tb").rglob("events.out.tfevents.*"))))
    events.Reload()
    return {name: [e.value for e in events.Scalars(f"train/{name}")] for name in names}
