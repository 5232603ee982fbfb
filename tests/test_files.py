"""``predict`` on image files read in place: ``--data.predict_url`` naming a folder or one file."""

from __future__ import annotations

import csv
from pathlib import Path

import deeplake
import numpy as np
import pytest
from PIL import Image

from fashion_lake.cli import cli_main
from fashion_lake.data.files import image_files
from fashion_lake.errors import DatasetError

ROWS = 10


def _predictions(cli) -> list[dict[str, str]]:
    return list(csv.DictReader((Path(cli.trainer.log_dir) / "predictions.csv").open()))


@pytest.fixture
def image_folder(tiny_lakes: dict[str, str], tmp_path: Path) -> Path:
    """The test lake's first rows as png files (some in a sub-folder), row 3 at twice the size."""
    ds = deeplake.open_read_only(tiny_lakes["test"])
    root = tmp_path / "to-predict"
    for row in range(ROWS):
        pixels = np.asarray(ds["images"][row])[..., 0]
        path = root / ("nested" if row % 2 else "") / f"row{row:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels)
        (image.resize((56, 56), Image.NEAREST) if row == 3 else image).save(path)
    return root


def test_predict_on_a_folder_of_files(
    fitted_checkpoint: str, cli_args: list[str], image_folder: Path, tiny_lakes: dict[str, str]
) -> None:
    lake = _predictions(cli_main(["predict", *cli_args, "--ckpt_path", fitted_checkpoint]))
    files = _predictions(cli_main(["predict", *cli_args, "--ckpt_path", fitted_checkpoint,
                                   "--data.predict_url", str(image_folder)]))  # fmt: skip
    assert [r["path"] for r in files] == [str(p) for p in image_files(str(image_folder))]
    assert len(files) == ROWS
    by_row = {int(Path(r["path"]).stem[3:]): r for r in files}
    for row in range(ROWS):
        if row == 3:  # resized from 56x56 to the 28x28 the model was trained on
            continue
        assert by_row[row]["class_id"] == lake[row]["class_id"], row
        assert float(by_row[row]["probability"]) == pytest.approx(float(lake[row]["probability"]), abs=2e-6)
    assert 0.0 < float(by_row[3]["probability"]) <= 1.0
    # nothing was ingested: the folder holds what it held
    assert sorted(p.name for p in image_folder.rglob("*") if p.is_file()) == [
        f"row{i:02d}.png" for i in range(ROWS)
    ]


def test_predict_on_one_file(fitted_checkpoint: str, cli_args: list[str], image_folder: Path) -> None:
    one = image_folder / "row00.png"
    rows = _predictions(cli_main(["predict", *cli_args, "--ckpt_path", fitted_checkpoint,
                                  "--data.predict_url", str(one)]))  # fmt: skip
    assert [r["path"] for r in rows] == [str(one)] and rows[0]["index"] == "0"


def test_a_file_that_is_no_image_is_one_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DatasetError, match="is a file but not an image"):
        image_files(str(text))
    assert image_files(str(tmp_path / "not-there-yet")) is None  # a lake to be built, as before
