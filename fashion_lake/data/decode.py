"""Encoded image bytes -> uint8 pixels, on the host (in DataLoader workers) or on the device.

Deep Lake decodes a compressed image column a whole storage chunk at a time, whatever the
slice, while its encoded bytes come out cheaply (docs/data-path.md has the figures). So for
png/jpeg columns the reader takes the bytes of whole read units and decodes only the
rows of each batch part, here: every row is decoded once per epoch, in the process that reads
its unit, and worker processes scale the decode over the cores (threads do not: the GIL).

Host decoders, fastest first (the same pixels): png with pyspng (libspng), jpeg with
simplejpeg (libjpeg-turbo), both faster than torchvision's decode op. torchvision decodes
whatever they do not (other formats, a mode they cannot convert to) and is the fallback where
they are not installed.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

HOST_CODECS = frozenset({"png", "jpeg", "jpg", "webp", "gif"})  # what torchvision.io.decode_image reads
DEVICE_CODECS = frozenset({"jpeg", "jpg"})  # torchvision's batched decode_jpeg (nvjpeg on CUDA)
_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB, 4: ImageReadMode.RGB_ALPHA}
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # pyspng's names
HAS_PYSPNG = importlib.util.find_spec("pyspng") is not None
HAS_SIMPLEJPEG = importlib.util.find_spec("simplejpeg") is not None

Decoder = Callable[[bytes], np.ndarray]  # encoded bytes -> uint8 (H, W, C); raises if they do not decode


def image_codec(ds: object, column: str) -> str | None:
    """The column's sample compression if its rows are decoded here, else None.

    None means Deep Lake hands out pixels itself: raw (``sample_compression`` null) columns,
    and compressions torchvision cannot decode (Deep Lake 3 datasets may hold any).
    """
    codec = getattr(ds.schema[column].dtype, "sample_compression", None)
    codec = str(codec).lower() if codec else None
    return codec if codec in HOST_CODECS else None


def _torchvision(channels: int) -> Decoder:
    """torchvision's decode op itself, else its public ``decode_image``.

    The public function wraps the same op with a usage log and a deprecation warning on every
    call (torchvision 0.29 deprecates its decoders for TorchCodec); for small images that
    wrapper costs a large share of the decode. (TorchCodec's ``decode_image`` is slower still.)
    """
    mode = _MODES.get(channels, ImageReadMode.UNCHANGED)
    op = getattr(getattr(torch.ops, "image", None), "decode_image", None)

    def decode(data: bytes) -> np.ndarray:
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # writable: frombuffer warns otherwise
        image = op(tensor, mode.value, False) if op is not None else decode_image(tensor, mode=mode)
        return eight_bit(image.permute(1, 2, 0).numpy())

    return decode


def eight_bit(image: np.ndarray) -> np.ndarray:
    """uint8 pixels: 16-bit ones (a 16-bit grey png decodes to uint16) keep their high byte."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    raise ValueError(f"cannot read {image.dtype} pixels as 8-bit images")


def host_decoder_name(codec: str, channels: int) -> str:
    """Which library ``host_decoder`` decodes ``codec`` with (for the live-path line)."""
    if codec == "png" and HAS_PYSPNG and channels in _PIL_MODES:
        return "pyspng"
    if codec in DEVICE_CODECS and HAS_SIMPLEJPEG and channels in (1, 3):
        return "simplejpeg"
    return "torchvision"


@functools.cache
def host_decoder(codec: str, channels: int) -> Decoder:
    """The fastest installed decoder of ``codec`` bytes to ``channels`` channels."""
    fallback = _torchvision(channels)
    fast: Decoder | None = None
    if codec == "png" and HAS_PYSPNG and channels in _PIL_MODES:
        import pyspng

        def fast(data: bytes) -> np.ndarray:
            return pyspng.load(bytes(data), _PIL_MODES[channels])
    elif codec in DEVICE_CODECS and HAS_SIMPLEJPEG and channels in (1, 3):
        import simplejpeg

        def fast(data: bytes) -> np.ndarray:
            return simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB")

    if fast is None:
        return fallback

    def decode(data: bytes) -> np.ndarray:
        try:
            image = fast(data)
        except Exception:  # a mode it cannot convert to, or bytes it refuses: torchvision decides
            return fallback(data)
        return eight_bit(image if image.ndim == 3 else image[..., None])

    return decode


class SizeMismatch(ValueError):
    """An image that decodes to another size than its batch's."""

    def __init__(self, position: int, shape: tuple[int, ...]) -> None:
        super().__init__(f"image {position} of the batch is {shape}")
        self.position, self.shape = position, shape


@functools.cache
def _row_decoder(codec: str, channels: int) -> Callable[[bytes, np.ndarray], np.ndarray]:
    """Decodes an image into its row of a batch where the decoder can write there (simplejpeg),
    and returns the row then; else returns the image decoded elsewhere."""
    decode = host_decoder(codec, channels)
    if codec not in DEVICE_CODECS or not HAS_SIMPLEJPEG or channels not in (1, 3):
        return lambda data, row: decode(data)
    import simplejpeg

    colorspace = "GRAY" if channels == 1 else "RGB"

    def into(data: bytes, row: np.ndarray) -> np.ndarray:
        try:
            image = simplejpeg.decode_jpeg(data, colorspace=colorspace, buffer=row)
        except ValueError:  # bytes it refuses, or an image larger than the row: decided as elsewhere
            return decode(data)
        return row if image.shape == row.shape else image  # a smaller image fills only part of the row

    return into


def decode_into(encoded: Sequence[bytes], codec: str, out: np.ndarray) -> list[int]:
    """Decode image ``i`` of ``encoded`` into ``out[i]`` (uint8 ``(N, H, W, C)``), and return the
    positions of those that do not decode (their rows of ``out`` are left as they were).

    One array for the batch, filled in place: stacking one array per image would cost a
    noticeable share of a small jpeg's decode. Raises ``SizeMismatch`` for an image of another size.
    """
    decode = _row_decoder(codec, out.shape[-1])
    bad = []
    for i, (data, row) in enumerate(zip(encoded, out, strict=True)):
        try:
            image = decode(data, row)
        except (RuntimeError, ValueError):  # torchvision's errors for bytes that are not an image
            bad.append(i)
            continue
        if image is not row:
            if image.shape != row.shape:
                raise SizeMismatch(i, image.shape)
            row[...] = image
    return bad


def decode_host(encoded: Sequence[bytes], codec: str, channels: int) -> list[np.ndarray | None]:
    """Each image as uint8 ``(H, W, channels)``; None where the bytes do not decode."""
    decode = host_decoder(codec, channels)
    images: list[np.ndarray | None] = []
    for data in encoded:
        try:
            images.append(decode(data))
        except (RuntimeError, ValueError):  # torchvision's errors for bytes that are not an image
            images.append(None)
    return images


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``(..., C)`` images as ``channels`` channels: grey repeated to RGB, RGB to grey as
    Pillow's ``convert("L")`` (ITU-R 601-2 luma), alpha dropped."""
    have = images.shape[-1]
    if have == 2:  # grey + alpha: the grey
        images, have = images[..., :1], 1
    if have == channels:
        return images
    if have == 1:
        return np.repeat(images, channels, axis=-1)
    if channels == 1:
        rgb = images[..., :3].astype(np.uint32)
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16  # Pillow's
        return luma.astype(np.uint8)[..., None]
    if channels == 3:
        return np.ascontiguousarray(images[..., :3])
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def image_channels(data: bytes) -> int:
    """Channels an encoded image holds, from its header: 1 for grey (with or without alpha),
    else 3 (palettes and CMYK are decoded to RGB), 4 for RGBA."""
    import io

    from PIL import Image

    from fashion_lake.ingest.folder import GREY_MODES

    with Image.open(io.BytesIO(bytes(data))) as image:
        mode = image.mode
    if mode in GREY_MODES:
        return 1
    return 4 if mode == "RGBA" else 3


def pack(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Many encoded images as one buffer and their lengths: an encoded batch crosses from a
    worker as two arrays, not one object per image."""
    lengths = np.fromiter((len(data) for data in encoded), np.int64, len(encoded))
    return np.frombuffer(bytearray(b"".join(encoded)), dtype=np.uint8), lengths


def unpack(flat: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, lengths.tolist()))


def decode_on_device(
    flat: torch.Tensor, lengths: torch.Tensor, channels: int, device: torch.device
) -> torch.Tensor:
    """A batch of jpeg images decoded together on ``device`` (nvjpeg on CUDA) as ``(B, C, H, W)``.

    Raises ``RuntimeError`` if any image does not decode or the sizes differ; the caller then
    decodes on the host, which names or skips the bad rows.
    """
    if not len(lengths):
        return torch.empty(0, channels, 0, 0, dtype=torch.uint8, device=device)
    mode = _MODES.get(channels, ImageReadMode.UNCHANGED)
    images = decode_jpeg(unpack(flat, lengths), mode=mode, device=device)
    return torch.stack(images)


def decode_all(encoded: Sequence[bytes], codec: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode ``(H, W, C)`` images into one array as the loader does: the benchmark's decode-only bound."""
    out = np.empty((len(encoded), *shape), np.uint8)
    if decode_into(encoded, codec, out):
        raise ValueError("corrupt image bytes")
    return out
