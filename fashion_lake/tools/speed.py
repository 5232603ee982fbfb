"""Training speed of a config: samples/s of the whole training step, and the share spent waiting for data.

python -m fashion_lake.tools.speed --config configs/fashion.yaml [--config configs/best.yaml] [--steps 30]
    [--warmup 5] [any other fit option, e.g. --trainer.precision 32-true]

Runs ``fit`` for ``warmup + steps`` training steps with no validation and no checkpoints, then
prints one line. A step is the time from the end of one step to the end of the next: fetching
the batch, moving and augmenting it, forward, backward and the optimizer, as ``DataWait``
measures it. Warm-up steps (loader start, the picture ``Reports`` draws, cuDNN autotuning,
``torch.compile``) are left out, so CPU and GPU runs compare like for like.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

from fashion_lake.callbacks import DataWait
from fashion_lake.cli import cli_main
from fashion_lake.errors import ConfigError, DatasetError, OneLineErrors, run_command


class StepMeter(DataWait):
    """``DataWait`` that also keeps every step's rows, seconds and seconds spent waiting for data."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[int, float, float]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.steps.append((len(batch["labels"]), self.step_time, self.wait))


def measure(args: list[str], steps: int = 30, warmup: int = 5) -> dict[str, float]:
    """Train ``warmup + steps`` steps with the fit options ``args``; rates over the last ``steps``."""
    if steps < 1 or warmup < 0:
        raise ConfigError(f"need --steps >= 1 and --warmup >= 0, got {steps} and {warmup}.")
    fixed = ["--trainer.max_steps", str(warmup + steps), "--trainer.max_epochs", "-1",
             "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]  # fmt: skip
    cli = cli_main([*args, *fixed], run=False)  # no subcommand: fit is called below
    meter = StepMeter()
    trainer = cli.trainer
    # The config's DataWait would log data_wait a second time; checkpoints are not what is timed.
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, DataWait | Checkpoint)] + [meter]
    trainer.fit(cli.model, datamodule=cli.datamodule)
    timed = meter.steps[warmup:]
    if len(timed) < steps:
        raise DatasetError(
            f"only {len(meter.steps)} training steps ran of {warmup + steps}; use a larger training set "
            "or fewer --steps / --warmup."
        )
    rows, seconds = sum(n for n, _, _ in timed), sum(s for _, s, _ in timed)
    return {
        "samples_per_s": rows / seconds,
        "data_wait": sum(w / s for _, s, w in timed) / len(timed),  # DataWait's per-step mean
        "step_ms": 1000 * seconds / len(timed),
        "median_step_ms": 1000 * statistics.median(s for _, s, _ in timed),  # robust on a shared machine
        "batch": rows / len(timed),
        "steps": len(timed),
        "precision": str(trainer.precision),
        "device": str(cli.model.device.type),
    }


class _Parser(OneLineErrors, argparse.ArgumentParser):
    program = "fashion_lake.tools.speed"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = _Parser(prog="python -m fashion_lake.tools.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    result = run_command("fashion_lake.tools.speed", lambda: measure(rest, ours.steps, ours.warmup))
    print(
        f"speed: {result['samples_per_s']:.1f} samples/s ({result['step_ms']:.1f} ms per training step of "
        f"{result['batch']:g} rows, median {result['median_step_ms']:.1f} ms; {result['steps']} steps after "
        f"{ours.warmup} warm-up), data_wait "
        f"{result['data_wait']:.1%}, {result['device']}, precision {result['precision']}"
    )
    return result


if __name__ == "__main__":
    main()
