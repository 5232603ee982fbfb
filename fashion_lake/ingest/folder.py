"""Reading a torchvision ImageFolder tree (``root/<class>/<files>``) file by file.

This runs in spawned ingest worker processes, so it imports only the standard library, numpy
and PIL: no torch, no deeplake, no tqdm (importing ``fashion_lake`` itself is lazy for this).
Nothing here raises for a bad image: ``probe`` and ``encode`` hand back an error string naming
the file, and the parent decides whether that stops the ingest or skips the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashion_lake.errors import IngestError

# torchvision.datasets.folder.IMG_EXTENSIONS, copied: importing torchvision costs a worker seconds.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # how Pillow opens 16-bit grey pngs
FORMATS = {"JPEG": "jpeg", "PNG": "png"}  # PIL's format name -> our compression name
ORIENTATION = 0x0112  # the EXIF tag that says how a camera photo is rotated
JPEG_QUALITY = 95
# What a bad file raises in PIL: not an image, truncated, malformed, or absurdly large.
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class Listing(NamedTuple):
    """An ImageFolder tree: (path, class id) of every image file in ImageFolder order, the class
    names, and the files left out for their extension (paths relative to the root)."""

    files: list[tuple[str, int]]
    classes: list[str]
    ignored: list[str]


def list_image_folder(root: str | Path) -> Listing:
    """Every image file of an ImageFolder tree, and the files that are not read.

    As torchvision's ``ImageFolder``: classes are the sorted subfolder names, files are found
    recursively and sorted, and only the image extensions count; the other files are listed
    as ``ignored``, so that the caller can say so.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise IngestError(f"image folder {str(root)!r} is not a directory.")
    # hidden folders (.ipynb_checkpoints, .git, ...) are not classes
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise IngestError(f"{root} has no class subfolders; expected root/<class_name>/<image files>.")
    files: list[tuple[str, int]] = []
    ignored: list[str] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if not path.is_file():
                continue
            if path.suffix.lower() in IMG_EXTENSIONS:
                files.append((str(path), label))
            else:
                ignored.append(str(path.relative_to(root)))
    if not files:
        raise IngestError(f"{root} holds no image files ({', '.join(IMG_EXTENSIONS)}).")
    empty = sorted(set(classes) - {classes[label] for _, label in files})
    if empty:  # a class the model would learn to never predict, and that shifts every class id after it
        raise IngestError(
            f"class folder(s) {', '.join(map(repr, empty))} in {root} hold no image files "
            f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folder(s)."
        )
    return Listing(files, classes, ignored)


class Header(NamedTuple):
    """What a file's header says: PIL format ("JPEG", "PNG", ...), PIL mode, and whether its
    pixels are grey (grey modes, and palettes whose colours are all grey)."""

    format: str
    mode: str
    grey: bool


def _unreadable(path: str, error: BaseException) -> str:
    return f"{path} is not a readable image ({' '.join(str(error).split()) or type(error).__name__})"


def _grey_palette(img: Image.Image) -> bool:
    palette = img.getpalette("RGB") or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), 3))


def probe(path: str) -> Header | str:
    """The file's header (PIL opens lazily: no pixels are decoded), or an error string."""
    try:
        with Image.open(path) as img:
            grey = img.mode in GREY_MODES or (img.mode == "P" and _grey_palette(img))
            return Header(img.format or "", img.mode, grey)
    except IMAGE_ERRORS as e:
        return _unreadable(path, e)


def probe_many(paths: list[str]) -> list[Header | str]:
    """``probe`` over a chunk of files: one task for a worker process."""
    return [probe(path) for path in paths]


@dataclass(frozen=True)
class Plan:
    """How every file is stored: PIL mode, sample compression, and the size, if resized.

    ``image_size`` None keeps each file's size; an int N resizes the shorter side to N keeping
    the aspect ratio (torchvision's ``Resize(N)``); (H, W) resizes to exactly H x W.
    """

    mode: str
    compression: str
    image_size: int | tuple[int, int] | None = None
    quality: int = JPEG_QUALITY


class Encoded(NamedTuple):
    """One file as stored: its own bytes (``kept``), re-encoded bytes or, for compression
    "null", a uint8 HxWxC array; or ``error`` (data None) if the file does not decode."""

    data: bytes | np.ndarray | None
    kept: bool = False
    error: str | None = None


def _output_size(width: int, height: int, image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) after resizing, as torchvision's ``Resize`` computes it."""
    if not isinstance(image_size, int):
        return image_size[1], image_size[0]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(image_size * long / short)
    return (image_size, new_long) if width <= height else (new_long, image_size)


def _keepable(img: Image.Image, plan: Plan) -> bool:
    """Whether the file's own bytes are what re-encoding would store, less the loss: already
    in the plan's format and mode, 8 bits a sample (PIL opens a 16-bit RGB png, or a 1-, 2- or
    4-bit grey one, as "RGB" or "L" too: its tile's raw mode says), upright, unresized, and
    without a transparency colour."""
    return (
        plan.image_size is None
        and FORMATS.get(img.format or "") == plan.compression
        and img.mode == plan.mode
        and (img.format != "PNG" or all(tile[3] == img.mode for tile in img.tile))
        and img.getexif().get(ORIENTATION, 1) == 1
        and "transparency" not in img.info
    )


def encode(path: str, plan: Plan) -> Encoded:
    """The file as the plan stores it. Kept bytes are decoded once first (a jpeg at 1/8 scale:
    the whole entropy stream is still read), so a truncated or corrupt file is found here."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            if _keepable(img, plan):
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
                return Encoded(data, kept=True)
            out = ImageOps.exif_transpose(img)
            if out.mode in SIXTEEN_BIT:  # Pillow's convert clips 16-bit values to 255: keep the high byte
                pixels = np.asarray(out).astype(np.int64).clip(0, 65535) >> 8
                out = Image.fromarray(pixels.astype(np.uint8), "L")
            if out.mode == "P" and "transparency" in out.info:
                out = out.convert("RGBA")  # PIL warns converting palette transparency straight to L/RGB
            out = out.convert(plan.mode)
        if plan.image_size is not None:
            size = _output_size(out.width, out.height, plan.image_size)
            out = out.resize(size, Image.BILINEAR, reducing_gap=None)
        if plan.compression == "null":
            array = np.asarray(out, dtype=np.uint8)
            return Encoded(array[..., None] if array.ndim == 2 else array)
        buf = io.BytesIO()
        if plan.compression == "jpeg":
            out.save(buf, "JPEG", quality=plan.quality)
        else:
            out.save(buf, "PNG")
        return Encoded(buf.getvalue())
    except IMAGE_ERRORS as e:
        return Encoded(None, error=_unreadable(path, e))


def encode_many(paths: list[str], plan: Plan) -> list[Encoded]:
    """``encode`` over a chunk of files: one task for a worker process."""
    return [encode(path, plan) for path in paths]
