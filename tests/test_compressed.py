"""png and jpeg lakes, written with plain deeplake from real Fashion-MNIST rows, on the batch path."""

from __future__ import annotations

import functools
import io
import platform
from pathlib import Path

import deeplake
import numpy as np
import pytest
import torch
from PIL import Image

from fashion_lake import DeepLakeDataModule
from fashion_lake.data.order import DistContext
from fashion_lake.errors import ConfigError, DatasetError
from fashion_lake.ingest.write import read_idx

ROWS = {"train": 120, "test": 50}  # conftest's TINY_ROWS


def _module(lakes: dict[str, str], **kwargs) -> DeepLakeDataModule:
    return DeepLakeDataModule(train_url=lakes["train"], val_url=lakes["test"], **kwargs)


def _source(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")[: ROWS[split]]
    labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz")[: ROWS[split]]
    return images, labels


def test_png_lake_yields_the_source_pixels(codec_lakes: dict, real_raw_dir: Path) -> None:
    dm = _module(codec_lakes["png"], batch_size=16, num_workers=0)
    batches = list(dm.val_dataloader())
    assert dm.datasets["val"].info.codec == "png"
    images, labels = _source(real_raw_dir, "test")
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(50))
    got = torch.cat([b["images"] for b in batches])
    assert got.dtype == torch.uint8 and got.shape == (50, 1, 28, 28)
    np.testing.assert_array_equal(got[:, 0].numpy(), images)
    np.testing.assert_array_equal(torch.cat([b["labels"] for b in batches]).numpy(), labels)


def test_jpeg_lake_decodes_like_deeplake(codec_lakes: dict, real_raw_dir: Path) -> None:
    """jpeg is lossy: the pixels match Deep Lake's own decode of the same bytes and stay near the source."""
    dm = _module(codec_lakes["jpeg"], batch_size=50, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    lake = deeplake.open_read_only(codec_lakes["jpeg"]["test"])  # held: slices live as long as it
    stored = np.asarray(lake["images"][0:50])
    got = batch["images"].permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(got - stored.astype(int)).max() <= 2
    images, _ = _source(real_raw_dir, "test")
    assert np.abs(got[..., 0] - images.astype(int)).mean() < 8


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_two_ranks_with_workers_read_every_row_once(codec_lakes: dict, codec: str) -> None:
    consumed = []
    for rank in range(2):
        dm = _module(codec_lakes[codec], global_batch_size=20, num_workers=2, drop_last=False)  # fmt: skip
        dm.dist = DistContext(rank, 2)
        batches = list(dm.train_dataloader())
        assert all(b["images"].shape[1:] == (1, 28, 28) for b in batches)
        consumed.append(torch.cat([b["index"] for b in batches]))
    rows = torch.cat(consumed).tolist()
    assert sorted(rows) == list(range(120)) and rows != list(range(120))


def test_batches_hold_their_rows_pixels(codec_lakes: dict, real_raw_dir: Path) -> None:
    """Shuffled training batches from worker processes: each image is the one of its row."""
    images, labels = _source(real_raw_dir, "train")
    dm = _module(codec_lakes["png"], batch_size=16, num_workers=2)
    for batch in dm.train_dataloader():
        rows = batch["index"].numpy()
        np.testing.assert_array_equal(batch["images"][:, 0].numpy(), images[rows])
        np.testing.assert_array_equal(batch["labels"].numpy(), labels[rows])


def test_resume_mid_epoch_on_a_png_lake(codec_lakes: dict) -> None:
    def make() -> DeepLakeDataModule:
        return _module(codec_lakes["png"], batch_size=16, num_workers=2)

    dm = make()
    batches = iter(dm.train_dataloader())
    for _ in range(3):
        next(batches)
    state = dm.state_dict()
    rest = [b["index"].tolist() for b in batches]
    resumed = make()
    resumed.load_state_dict(state)
    assert [b["index"].tolist() for b in resumed.train_dataloader()] == rest


def test_workers_default_by_storage(codec_lakes: dict, tiny_lakes: dict[str, str]) -> None:
    """Unset, num_workers is 0 for raw lakes and one per core for compressed ones."""
    import os

    assert _module(tiny_lakes, batch_size=16).val_dataloader().num_workers == 0
    loader = _module(codec_lakes["png"], batch_size=16).val_dataloader()
    assert loader.num_workers == max(1, min(8, len(os.sched_getaffinity(0))))
    assert _module(codec_lakes["png"], batch_size=16, num_workers=1).val_dataloader().num_workers == 1


def test_device_decode_matches_host_decode(codec_lakes: dict) -> None:
    """decode=device hands the loader's encoded jpeg batch to decode_jpeg on the device (here the CPU)."""
    host = next(iter(_module(codec_lakes["jpeg"], batch_size=50, num_workers=0).val_dataloader()))
    dm = _module(codec_lakes["jpeg"], batch_size=50, num_workers=0, decode="device")
    encoded = next(iter(dm.val_dataloader()))
    assert "images" not in encoded and encoded["encoded"].dtype == torch.uint8
    batch = dm.datasets["val"].decode_batch(encoded, torch.device("cpu"))
    assert torch.equal(batch["images"], host["images"]) and torch.equal(batch["index"], host["index"])


def test_unknown_decode_place_is_refused(codec_lakes: dict) -> None:
    with pytest.raises(ConfigError, match="data.decode must be auto, host or device, not 'gpu'"):
        _module(codec_lakes["jpeg"], batch_size=16, decode="gpu")


def test_device_decode_of_png_is_refused(codec_lakes: dict) -> None:
    with pytest.raises(ConfigError, match="decode device decodes jpeg only.*holds png images"):
        _module(codec_lakes["png"], batch_size=16, decode="device").setup("validate")


def test_fit_with_device_decode(codec_lakes: dict, cli_args: list[str], tmp_path: Path) -> None:
    """Through the Trainer: batches decode in on_before_batch_transfer, in training and validation."""
    from fashion_lake.cli import cli_main

    lakes = codec_lakes["jpeg"]
    cli = cli_main(["fit", *cli_args, "--data.train_url", lakes["train"], "--data.val_url", lakes["test"],
                    "--data.decode", "device", "--data.num_workers", "0",
                    "--trainer.limit_val_batches", "2"])  # fmt: skip
    assert cli.trainer.global_step == 2
    assert 0.0 <= float(cli.trainer.callback_metrics["val_acc"]) <= 1.0


@pytest.mark.parametrize("decode", ["host", "device"])
def test_corrupt_jpeg_row_is_named_or_skipped(corrupt_jpeg_lake: str, decode: str) -> None:
    lakes = {"train": corrupt_jpeg_lake, "test": corrupt_jpeg_lake}
    dm = _module(lakes, batch_size=12, num_workers=0, decode=decode)
    dm.setup("validate")

    def first_batch(module: DeepLakeDataModule) -> dict:
        batch = next(iter(module.val_dataloader()))
        if "encoded" in batch:  # what on_before_batch_transfer does in a Trainer
            batch = module.datasets["val"].decode_batch(batch, torch.device("cpu"))
        return batch

    corrupt = r"row 5 of .* holds corrupt image bytes \(corrupt rows here: \[5\]"
    with pytest.raises(DatasetError, match=corrupt):
        first_batch(dm)
    skipping = _module(lakes, batch_size=12, num_workers=0, decode=decode, skip_corrupt=True)
    batch = first_batch(skipping)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11] and int(batch["skipped"]) == 1


def test_a_row_skipped_in_device_decoding_leaves_the_ranks_share_of_the_rest(corrupt_jpeg_lake: str) -> None:
    """A training batch that falls back to decoding on the host and skips a corrupt row keeps
    its other keys, and its ``rank_share`` counts the rows kept."""
    lakes = {"train": corrupt_jpeg_lake, "test": corrupt_jpeg_lake}
    dm = _module(lakes, batch_size=12, num_workers=0, decode="device", skip_corrupt=True)
    dm.setup("fit")
    encoded = next(iter(dm.train_dataloader()))
    assert float(encoded["rank_share"]) == 1.0
    batch = dm.datasets["train"].decode_batch(encoded, torch.device("cpu"))
    assert len(batch["index"]) == 11 and int(batch["skipped"]) == 1
    assert float(batch["rank_share"]) == pytest.approx(11 / 12)


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_fast_decoders_equal_the_torchvision_fallback(
    codec: str, codec_lakes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyspng / simplejpeg where installed, torchvision's decoder otherwise: the same pixels, and
    corrupt bytes are None either way."""
    from fashion_lake.data import decode

    lake = deeplake.open_read_only(codec_lakes[codec]["test"])
    encoded = [*lake["images"].get_bytes(slice(0, 50)), b"\x89PNG\r\n\x1a\n not an image", b""]
    # simplejpeg is a dependency everywhere; pyspng where pyproject installs it (no Linux aarch64 wheel)
    assert decode.HAS_SIMPLEJPEG
    assert decode.HAS_PYSPNG or (platform.system() == "Linux" and platform.machine() != "x86_64")
    fast = decode.decode_host(encoded, codec, 1)
    fast_into = np.empty((52, 28, 28, 1), np.uint8)
    assert decode.decode_into(encoded, codec, fast_into) == [50, 51]
    for name in ("HAS_PYSPNG", "HAS_SIMPLEJPEG"):
        monkeypatch.setattr(decode, name, False)
    caches = (decode.host_decoder, decode._row_decoder)  # the decoders chosen per (codec, channels)
    monkeypatch.setattr(decode, "host_decoder", functools.cache(decode.host_decoder.__wrapped__))
    monkeypatch.setattr(decode, "_row_decoder", functools.cache(decode._row_decoder.__wrapped__))
    assert decode.host_decoder(codec, 1) is not caches[0](codec, 1)
    fallback = decode.decode_host(encoded, codec, 1)
    fallback_into = np.empty((52, 28, 28, 1), np.uint8)
    assert decode.decode_into(encoded, codec, fallback_into) == [50, 51]
    assert fast[-2:] == fallback[-2:] == [None, None]
    np.testing.assert_array_equal(np.stack(fast[:-2]), np.stack(fallback[:-2]))
    np.testing.assert_array_equal(fast_into[:50], np.stack(fast[:-2]))
    np.testing.assert_array_equal(fallback_into[:50], np.stack(fast[:-2]))
    assert np.stack(fast[:-2]).shape == (50, 28, 28, 1)
    rgb = decode.decode_host(encoded[:2], codec, 3)  # grey stored, RGB asked for: converted
    assert rgb[0].shape == (28, 28, 3) and (rgb[0] == rgb[0][..., :1]).all()


def _encoded(image: np.ndarray, codec: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=codec.upper())
    return out.getvalue()


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_decode_into_fills_the_batch_and_refuses_other_sizes(codec: str, codec_lakes: dict) -> None:
    """Decoding straight into one batch array: the pixels of a decode, corrupt positions
    reported and left alone, and an image of another size (smaller or larger) refused."""
    from fashion_lake.data import decode

    lake = deeplake.open_read_only(codec_lakes[codec]["test"])
    encoded = list(lake["images"].get_bytes(slice(0, 20)))
    expected = np.stack(decode.decode_host(encoded, codec, 1))
    out = np.full((22, 28, 28, 1), 7, np.uint8)
    assert decode.decode_into([*encoded[:10], b"not an image", *encoded[10:], b""], codec, out) == [10, 21]
    np.testing.assert_array_equal(np.delete(out, [10, 21], axis=0), expected)
    assert (out[[10, 21]] == 7).all()
    for size in (20, 40):
        other = _encoded(np.full((size, size), 99, np.uint8), codec)
        with pytest.raises(decode.SizeMismatch) as refused:
            decode.decode_into([encoded[0], other], codec, np.empty((2, 28, 28, 1), np.uint8))
        assert refused.value.position == 1 and refused.value.shape[:2] == (size, size)
    rgb = np.empty((2, 28, 28, 3), np.uint8)
    assert decode.decode_into(encoded[:2], codec, rgb) == []
    np.testing.assert_array_equal(rgb, np.repeat(expected[:2], 3, axis=-1))
