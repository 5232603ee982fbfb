"""Export a trained classifier to run without fashion_lake (or Lightning):

python -m fashion_lake.export CKPT OUT.pt2    # torch.export: torch.export.load(OUT.pt2).module()
python -m fashion_lake.export CKPT OUT.onnx   # ONNX, with pip install 'fashion-lake[onnx]'

The program takes uint8 images ``(N, C, H, W)`` at the training size, as the loaders yield them,
and returns class probabilities ``(N, classes)``: normalising is inside, as in the model. The
class names and the input shape travel in ``OUT.json`` beside it (and inside a ``.pt2``, as its
extra file ``fashion_lake.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from fashion_lake.checkpoint import check_checkpoint
from fashion_lake.errors import CheckpointError, ConfigError, OneLineErrors, run_command
from fashion_lake.model import INPUT_SHAPE_KEY, FashionMnistModule

META_FILE = "fashion_lake.json"  # the extra file in a .pt2
MAX_BATCH = 4096


class Probabilities(nn.Module):
    """The classifier as it is exported: uint8 images in, softmax probabilities out."""

    def __init__(self, model: FashionMnistModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(images)


def load_model(ckpt: str | Path) -> tuple[FashionMnistModule, tuple[int, int, int] | None]:
    """The checkpoint's model on the CPU, in eval mode, and the ``(C, H, W)`` it was trained on (if saved)."""
    path = check_checkpoint(ckpt)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{str(ckpt)!r} is not a readable checkpoint (truncated or not a .ckpt file?): {e}"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "state_dict" not in checkpoint
        or "hyper_parameters" not in checkpoint
    ):
        raise CheckpointError(f"{str(ckpt)!r} is not a checkpoint written by `python -m fashion_lake fit`.")
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    try:
        model = FashionMnistModule(**{**hparams, "pretrained": False, "compile": False})
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{str(ckpt)!r} does not hold a fashion_lake classifier: {e}") from None
    shape = checkpoint.get(INPUT_SHAPE_KEY)
    return model.eval(), (tuple(shape) if shape else None)  # type: ignore[return-value]


def input_shape(model: FashionMnistModule, saved: tuple[int, int, int] | None, image_size: list[int] | None):
    """``(C, H, W)``: ``image_size`` when given, else the saved one, else Fashion-MNIST's 28 x 28."""
    channels = model.hparams.in_channels
    if image_size:
        if len(image_size) not in (1, 2) or min(image_size) < 1:
            raise ConfigError(f"--image_size takes N or H W (pixels), got {image_size}")
        height, width = (image_size * 2)[:2]
        return channels, height, width
    return saved or (channels, 28, 28)


def metadata(model: FashionMnistModule, shape: tuple[int, int, int]) -> dict:
    return {
        "class_names": list(model.class_names),
        "input": {"dtype": "uint8", "layout": "NCHW", "shape": ["N", *shape]},
        "output": "class probabilities (N, classes), in the order of class_names",
    }


def export_pt2(model: FashionMnistModule, shape: tuple[int, int, int], out: Path) -> None:
    example = torch.zeros(2, *shape, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(
        Probabilities(model).eval(), (example,), dynamic_shapes={"images": {0: batch}}
    )
    torch.export.save(program, out, extra_files={META_FILE: json.dumps(metadata(model, shape))})


def _check_onnx() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; imported here to say so in one line)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(
            "exporting to .onnx needs the onnx and onnxruntime packages: pip install 'fashion-lake[onnx]'"
        ) from None


def export_onnx(model: FashionMnistModule, shape: tuple[int, int, int], out: Path) -> None:
    example = torch.zeros(2, *shape, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    torch.onnx.export(
        Probabilities(model).eval(), (example,), str(out), input_names=["images"],
        output_names=["probabilities"], dynamic_shapes={"images": {0: batch}}, dynamo=True,
    )  # fmt: skip


def export(
    ckpt: str | Path, out: str | Path, image_size: list[int] | None = None, overwrite: bool = False
) -> Path:
    """Write ``out`` (``.pt2`` or ``.onnx``) and ``out``'s ``.json``; returns the program's path.

    Both are written beside themselves and renamed into place once whole, so an interrupted
    export leaves no half-written program; existing files are replaced only with ``overwrite``.
    """
    out = Path(out)
    if out.suffix not in (".pt2", ".onnx"):
        raise ConfigError(f"OUT must end in .pt2 (torch.export) or .onnx, got {str(out)!r}")
    if out.suffix == ".onnx":
        _check_onnx()
    sidecar = out.with_suffix(".json")
    existing = [str(path) for path in (out, sidecar) if path.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{' and '.join(existing)} already exist(s); pass --overwrite to replace, or another OUT."
        )
    model, saved = load_model(ckpt)
    shape = input_shape(model, saved, image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
    try:
        with torch.no_grad():
            (export_pt2 if out.suffix == ".pt2" else export_onnx)(model, shape, partial)
        sidecar_partial = partial.with_suffix(".json")
        sidecar_partial.write_text(json.dumps(metadata(model, shape), indent=2) + "\n")
        os.replace(partial, out)
        os.replace(sidecar_partial, sidecar)
    finally:
        partial.unlink(missing_ok=True)
        partial.with_suffix(".json").unlink(missing_ok=True)
    return out


class _Parser(OneLineErrors, argparse.ArgumentParser):
    program = "fashion_lake.export"


def main(argv: list[str] | None = None) -> None:
    parser = _Parser(prog="python -m fashion_lake.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a checkpoint written by `python -m fashion_lake fit`")
    parser.add_argument("out", help="OUT.pt2 (torch.export) or OUT.onnx (needs fashion-lake[onnx])")
    parser.add_argument(
        "--image_size", type=int, nargs="+", metavar="N",
        help="input H W (or N for N x N), for checkpoints that do not record it (default 28)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace OUT and OUT.json if they exist")
    args = parser.parse_args(argv)
    out = run_command(
        "fashion_lake.export", lambda: export(args.ckpt, args.out, args.image_size, args.overwrite)
    )
    print(f"Wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
