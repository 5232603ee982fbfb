"""The command line: ``python -m fashion_lake {fit,validate,test,predict} --config ...``."""

from __future__ import annotations

from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI

from fashion_lake.checkpoint import check_checkpoint
from fashion_lake.data import DeepLakeDataModule
from fashion_lake.errors import OneLineErrors, run_command
from fashion_lake.model import FashionMnistModule

CKPT_ALIASES = {"last", "best", "hpc", "registry"}


class OneLineParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser, with bad flags reported in one line."""


class FashionLakeCLI(LightningCLI):
    """LightningCLI whose model is sized from the dataset and whose data module shards itself."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.num_channels", "model.in_channels", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then check a ``ckpt_path`` file before LightningCLI reads its hyperparameters."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in CKPT_ALIASES and "://" not in str(ckpt):
            check_checkpoint(ckpt)


def cli_main(args: list[str] | None = None, run: bool = True) -> FashionLakeCLI:
    """Build (and by default run) the CLI; tests call this in-process."""
    return FashionLakeCLI(
        FashionMnistModule,
        DeepLakeDataModule,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the optimizer is a model argument
        parser_class=OneLineParser,
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point: bad input becomes one line on stderr and exit status 2."""
    run_command("fashion_lake", lambda: cli_main(args))
