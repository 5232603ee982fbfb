"""The command line: ``python -m fashion_lake {fit,validate,test,predict} --config ...``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from jsonargparse import ActionSubCommands
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI

from fashion_lake.checkpoint import WRITTEN_BY_FIT, check_checkpoint
from fashion_lake.data.module import DeepLakeDataModule
from fashion_lake.errors import ConfigError, OneLineErrors, run_command
from fashion_lake.model import FashionMnistModule

CKPT_ALIASES = {"last", "best", "hpc", "registry"}
DESCRIPTION = (
    "Train, evaluate and use image classifiers on Deep Lake datasets with PyTorch Lightning "
    "(the standalone pytorch_lightning package). Start from a config: --config configs/fashion.yaml."
)
# Lightning's own subcommand help is the first line of each Trainer method's docstring, cut mid-sentence
SUBCOMMAND_HELP = {
    "fit": "Train the model; checkpoints, logs and reports go to the logger's version folder.",
    "validate": "Evaluate a model (--ckpt_path) on the validation set.",
    "test": "Evaluate a model (--ckpt_path) on the test set, writes a confusion matrix and per-class table.",
    "predict": "Classify a dataset's rows, or image files (--data.predict_url), into predictions.csv.",
}
# a class path of the unified ``lightning`` package, e.g. lightning.pytorch.callbacks.EarlyStopping
UNIFIED_PACKAGE = re.compile(r"\blightning\.pytorch\.[\w.]+")


def program_name(argv0: str) -> str:
    """``python -m fashion_lake`` when run as a module (argv[0] is then ``__main__.py``)."""
    return "python -m fashion_lake" if Path(argv0).name == "__main__.py" else Path(argv0).name


def check_lightning_package(args: list[str]) -> None:
    """Refuse ``lightning.pytorch`` class paths, in arguments or the config files they name.

    This project is built on the standalone ``pytorch_lightning`` package: a class of the unified
    ``lightning`` package is another class to Lightning (a ``lightning.pytorch`` callback is no
    ``pytorch_lightning`` callback), and jsonargparse would refuse it in many lines.
    """
    texts = list(args)
    for flag, value in zip(args, args[1:], strict=False):
        if flag in ("-c", "--config") and Path(value).is_file():
            texts.append(Path(value).read_text())
    texts += [Path(a.split("=", 1)[1]).read_text() for a in args if a.startswith("--config=")
              and Path(a.split("=", 1)[1]).is_file()]  # fmt: skip
    for text in texts:
        found = UNIFIED_PACKAGE.search(text)
        if found:
            name = found.group(0)
            standalone = name.replace("lightning.pytorch.", "pytorch_lightning.", 1)
            raise ConfigError(
                f"{name} is from the unified `lightning` package, but fashion_lake runs on the standalone "
                f"`pytorch_lightning` package; write {standalone} (and `import pytorch_lightning as pl` "
                "in Python)."
            )


class OneLineParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser, with bad flags reported in one line."""


class FashionLakeCLI(LightningCLI):
    """LightningCLI whose model is sized from the dataset and whose data module shards itself."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.num_channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.normalize", "model.normalize", apply_on="instantiate")

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        for action in parser._actions:  # the subcommand list's help: whole sentences
            if isinstance(action, ActionSubCommands):
                for choice in action._choices_actions:
                    choice.help = SUBCOMMAND_HELP.get(choice.dest, choice.help)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Refuse the unified package's class paths, parse, then check a ``ckpt_path`` file before
        LightningCLI reads its hyperparameters."""
        if args is None or isinstance(args, list):
            check_lightning_package(sys.argv[1:] if args is None else [str(a) for a in args])
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in CKPT_ALIASES and "://" not in str(ckpt):
            check_checkpoint(ckpt, f"{WRITTEN_BY_FIT}, or --ckpt_path last")


def cli_main(args: list[str] | None = None, run: bool = True) -> FashionLakeCLI:
    """Build (and by default run) the CLI; tests call this in-process."""
    return FashionLakeCLI(
        FashionMnistModule,
        DeepLakeDataModule,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the optimizer is a model argument
        parser_class=OneLineParser,
        parser_kwargs={
            "prog": program_name(sys.argv[0]),
            "description": DESCRIPTION,
            **{name: {"description": text} for name, text in SUBCOMMAND_HELP.items()},
        },
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point: bad input becomes one line on stderr and exit status 2."""
    run_command("fashion_lake", lambda: cli_main(args))
