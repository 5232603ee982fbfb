"""Encoded image bytes -> uint8 pixels, on the host (in DataLoader workers) or on the device.

Deep Lake decodes a compressed image column a whole storage chunk at a time: a slice costs
~0.1 s whatever its length. Its encoded bytes come out at over a million rows per second.
So for png/jpeg columns the reader takes the bytes of whole blocks and decodes only the rows
of each batch, here: every row is decoded once per epoch, in the worker that serves its
batch, and worker processes scale the decode over the cores (threads do not: the GIL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

HOST_CODECS = frozenset({"png", "jpeg", "jpg", "webp", "gif"})  # what torchvision.io.decode_image reads
DEVICE_CODECS = frozenset({"jpeg", "jpg"})  # torchvision's batched decode_jpeg (nvjpeg on CUDA)
_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB, 4: ImageReadMode.RGB_ALPHA}


def image_codec(ds: object, column: str) -> str | None:
    """The column's sample compression if its rows are decoded here, else None.

    None means Deep Lake hands out pixels itself: raw (``sample_compression`` null) columns,
    and compressions torchvision cannot decode (Deep Lake 3 datasets may hold any).
    """
    codec = getattr(ds.schema[column].dtype, "sample_compression", None)
    codec = str(codec).lower() if codec else None
    return codec if codec in HOST_CODECS else None


def pack(encoded: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """Many encoded images as one writable uint8 buffer and their lengths.

    One copy per batch; an encoded batch crosses from a worker as two arrays, not one per image.
    """
    lengths = torch.tensor([len(data) for data in encoded], dtype=torch.int64)
    joined = bytearray(b"".join(encoded))  # writable: torch.frombuffer warns on read-only bytes
    flat = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
    return flat, lengths


def unpack(flat: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, lengths.tolist()))


def _host_decoder(mode: ImageReadMode) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's decode op itself, else its public ``decode_image``.

    The public function wraps the same op with a usage log and a deprecation warning on every
    call (torchvision 0.29 deprecates its decoders for TorchCodec); for small images that
    wrapper costs a third of the decode. TorchCodec's ``decode_image`` measured slower still
    here (44k/s png, 52k/s jpeg at 28x28 against the op's 65k/s and 87k/s on one core).
    """
    op = getattr(getattr(torch.ops, "image", None), "decode_image", None)
    if op is not None:
        value = mode.value
        return lambda data: op(data, value, False)
    return lambda data: decode_image(data, mode=mode)


def decode_host(flat: torch.Tensor, lengths: torch.Tensor, channels: int) -> list[torch.Tensor | None]:
    """Each image as uint8 ``(C, H, W)`` with ``channels`` channels; None where the bytes do not decode."""
    decode = _host_decoder(_MODES.get(channels, ImageReadMode.UNCHANGED))
    images: list[torch.Tensor | None] = []
    for data in unpack(flat, lengths):
        try:
            images.append(decode(data))
        except RuntimeError:  # torchvision's error for bytes that are not a decodable image
            images.append(None)
    return images


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


def decode_all(encoded: Sequence[bytes], channels: int) -> np.ndarray:
    """Decode a list of encoded images and stack them: the benchmark's decode-only bound."""
    images = decode_host(*pack(encoded), channels)
    return torch.stack(images).numpy()  # type: ignore[arg-type]
