"""``python -m fashion_lake.export``: a program that predicts as ``predict`` does, without fashion_lake."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import deeplake
import numpy as np
import pytest
import torch

from fashion_lake.cli import cli_main
from fashion_lake.errors import ConfigError
from fashion_lake.export import META_FILE, export, main
from fashion_lake.ingest.write import FASHION_MNIST_CLASSES

# Runs the exported program where fashion_lake cannot be imported (as on a machine without it).
RUN_WITHOUT_FASHION_LAKE = """
import sys
sys.modules["fashion_lake"] = None  # any import of it now fails
import torch
program = torch.export.load(sys.argv[1]).module()
with torch.no_grad():
    torch.save(program(torch.load(sys.argv[2])), sys.argv[3])
"""


@pytest.fixture
def checkpoint(fitted_checkpoint: str) -> str:
    return fitted_checkpoint


def _lake_images(url: str) -> torch.Tensor:
    """Every row's image as uint8 NCHW, as the loaders yield them."""
    ds = deeplake.open_read_only(url)
    return torch.from_numpy(np.stack([ds["images"][i] for i in range(len(ds))])).permute(0, 3, 1, 2)


def test_pt2_predicts_as_predict_does(
    checkpoint: str, cli_args: list[str], tiny_lakes: dict[str, str], tmp_path: Path
) -> None:
    out = export(checkpoint, tmp_path / "model.pt2")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["class_names"] == FASHION_MNIST_CLASSES and meta["input"]["shape"] == ["N", 1, 28, 28]
    inside = {META_FILE: ""}
    torch.export.load(out, extra_files=inside)
    assert json.loads(inside[META_FILE]) == meta

    images = _lake_images(tiny_lakes["test"])
    torch.save(images, tmp_path / "images.pt")
    script = tmp_path / "run.py"
    script.write_text(RUN_WITHOUT_FASHION_LAKE)
    run = [sys.executable, str(script), str(out), str(tmp_path / "images.pt"), str(tmp_path / "probs.pt")]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probabilities = torch.load(tmp_path / "probs.pt")
    assert probabilities.shape == (50, 10)

    predict = cli_main(["predict", *cli_args, "--ckpt_path", checkpoint])
    rows = list(csv.DictReader((Path(predict.trainer.log_dir) / "predictions.csv").open()))
    assert [int(r["index"]) for r in rows] == list(range(50))
    probability, class_id = probabilities.max(dim=1)
    assert class_id.tolist() == [int(r["class_id"]) for r in rows]
    np.testing.assert_allclose(probability.numpy(), [float(r["probability"]) for r in rows], atol=2e-6)


def test_onnx_export_gives_the_same_probabilities(checkpoint: str, tmp_path: Path) -> None:
    import onnxruntime  # the onnx extra, part of the dev install

    out = export(checkpoint, tmp_path / "model.onnx")
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    (got,) = onnxruntime.InferenceSession(str(out)).run(None, {"images": images.numpy()})
    program = torch.export.load(export(checkpoint, tmp_path / "program.pt2")).module()
    np.testing.assert_allclose(got, program(images).detach().numpy(), atol=1e-5)
    assert json.loads(out.with_suffix(".json").read_text())["class_names"] == FASHION_MNIST_CLASSES


def test_onnx_without_the_extra_is_one_line(
    checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: its import fails
    folder = tmp_path / "export"
    with pytest.raises(SystemExit) as exit_info:
        main([checkpoint, str(folder / "model.onnx")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "fashion_lake.export: error: exporting to .onnx needs the onnx and onnxruntime packages: "
        "pip install 'fashion-lake[onnx]'"
    ]
    assert not folder.exists()


def test_existing_output_is_kept_unless_overwrite(checkpoint: str, tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    out = tmp_path / "export" / "model.pt2"
    out.write_bytes(b"someone's program")
    with pytest.raises(ConfigError, match=r"model.pt2 already exist\(s\); pass --overwrite"):
        export(checkpoint, out)
    assert out.read_bytes() == b"someone's program"
    export(checkpoint, out, overwrite=True)
    torch.export.load(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.pt2"]  # no partial left


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("truncated", "is truncated or not a checkpoint"),
        ("missing", "does not exist; pass a .ckpt file written by `fit`"),
        ("weights", "is not a checkpoint written by `python -m fashion_lake fit`"),
    ],
)
def test_bad_checkpoint_is_one_clear_error(
    checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture, make: str, message: str
) -> None:
    bad = tmp_path / f"{make}.ckpt"
    if make == "truncated":
        data = Path(checkpoint).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif make == "weights":
        torch.save(torch.load(checkpoint, weights_only=False)["state_dict"], bad)
    with pytest.raises(SystemExit) as exit_info:
        main([str(bad), str(tmp_path / "model.pt2")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fashion_lake.export: error: ") and message in err[0]
