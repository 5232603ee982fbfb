"""The errors users see, and the one printer every command shares.

Every check of user input raises one of these with a message that names what is wrong and how
to fix it. ``run_command`` turns them into one ``PROGRAM: error: ...`` line on stderr and exit
status 2; ``FASHION_LAKE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")
DEBUG_ENV = "FASHION_LAKE_DEBUG"


class FashionLakeError(Exception):
    """Bad input (URL, dataset, file, config value, download): reported as one line, exit 2."""


class ConfigError(FashionLakeError, ValueError):
    """A config value or command-line flag that cannot work (a range, a combination, a name)."""


class DatasetError(FashionLakeError):
    """A dataset that cannot be opened or used: URL, storage, columns, classes, rows, pixels."""


class IngestError(FashionLakeError):
    """An ingest that cannot start or finish: its source, its destination, the raw files."""


class CheckpointError(FashionLakeError):
    """A checkpoint that is missing, truncated, not a checkpoint, or cannot resume this run."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


# class paths a config may still name from before the package's layout: where they live now
MOVED = {"fashion_lake.transforms.": "fashion_lake.data.augment."}


class OneLineErrors:
    """A mixin for jsonargparse parsers: a bad flag or config value is one ``PROGRAM: error:``
    line and exit 2, like every other mistake, instead of argparse's page of usage.

    ``program`` names the command; the mixin imports nothing, so that ingest stays light.
    """

    program = "fashion_lake"

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debugging():  # type: ignore[attr-defined]
            super().error(message, ex)  # type: ignore[misc]
        parser = getattr(ex, "subcommand_parser", None) or self
        usage = parser.prog.replace(" [options]", "")  # type: ignore[attr-defined]
        moved = [f"{old} is now {new}" for old, new in MOVED.items() if old in message]
        hint = f" ({'; '.join(moved)})" if moved else ""
        line = f"{self.program}: error: {' '.join(message.split())}{hint} (options: {usage} --help)"
        print(line, file=sys.stderr)
        raise SystemExit(2)


def message(error: BaseException) -> str:
    """The error's own one-line message, also when a DataLoader worker raised it.

    The loader re-raises a worker's error as ``Caught X in DataLoader worker process N`` plus
    the worker's traceback; the message is the traceback's last line, after ``X: ``.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def run_command(program: str, command: Callable[[], T]) -> T:
    """Run a command's body; a ``FashionLakeError`` becomes one line on stderr and exit 2."""
    try:
        return command()
    except FashionLakeError as e:
        if debugging():
            raise
        print(f"{program}: error: {message(e)}", file=sys.stderr)
        raise SystemExit(2) from None
