"""Checking a checkpoint file before Lightning or torch reads it."""

from __future__ import annotations

import zipfile
from pathlib import Path

from fashion_lake.errors import CheckpointError

WRITTEN_BY_FIT = "pass a .ckpt file written by `fit` (runs/NAME/version_N/checkpoints/last.ckpt)"


def check_checkpoint(path: str | Path, hint: str = WRITTEN_BY_FIT) -> Path:
    """``path`` if it is a whole checkpoint file, else a ``CheckpointError`` naming it.

    ``torch.save`` writes a zip archive: a truncated copy (an interrupted download or rsync, a
    full disk) loses the archive's directory at its end, and a bit flip fails a member's CRC.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; {hint}.")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or not a checkpoint ({' '.join(str(e).split())}); {hint}."
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt (its part {bad!r} fails its checksum); {hint}."
        )
    return path
