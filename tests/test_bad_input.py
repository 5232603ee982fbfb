"""Every mistake a user can make at a command line ends the same way: exit status 2, one line
that names what is wrong and how to fix it, and no input file created, changed or deleted.

Each case runs a real command in this process (``fashion_lake``, ``fashion_lake.ingest``,
``fashion_lake.tools.bench``, ``fashion_lake.tools.readbench``, ``fashion_lake.export``) from an
empty run folder, against a shared set of inputs that is hashed before and after it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CONFIGS, PhotoFolder, write_small_lake

from fashion_lake import export
from fashion_lake.cli import main as cli_main
from fashion_lake.ingest import write as ingest
from fashion_lake.ingest.write import FASHION_MNIST_CLASSES
from fashion_lake.tools import bench, readbench


@dataclass(frozen=True)
class Inputs:
    """The files the cases read, all under ``root`` or in the session's shared fixtures."""

    root: Path
    train: str
    test: str
    v3: str
    raw: Path
    closed_port: int

    def __getattr__(self, name: str) -> str:
        return str(self.root / name)

    def endpoint(self, **more: str) -> str:
        """Storage credentials naming a loopback port where nothing listens."""
        return json.dumps({"endpoint_url": f"http://127.0.0.1:{self.closed_port}", **more})

    def format(self, arg: str) -> str:
        """``arg`` with ``{i.NAME}`` and ``{endpoint}`` / ``{endpoint_timeout0}`` filled in."""
        return arg.format(
            i=self, endpoint=self.endpoint(), endpoint_timeout0=self.endpoint(connect_timeout="0")
        )


@pytest.fixture(scope="module")
def inputs(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_lakes: dict[str, str],
    tiny_raw_dir: Path,
    v3_lakes: dict[str, str],
) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    five = FASHION_MNIST_CLASSES[:5]
    write_small_lake(str(root / "val5"), rows=20, labels=[i % 10 for i in range(20)], class_names=five)
    write_small_lake(str(root / "float"), dtype="float32")
    write_small_lake(str(root / "empty"), rows=0)
    write_small_lake(str(root / "nonames"), class_names=None)
    photos = PhotoFolder(root / "photos")
    for cls in ("bag", "coat"):
        photos.add(cls, "a.png", "L", (16, 12))
        photos.add(cls, "b.jpg", "RGB", (20, 16))
    corrupt = PhotoFolder(root / "photos_corrupt")
    corrupt.add("bag", "a.jpg", "RGB", (32, 24))
    corrupt.add("coat", "b.jpg", "RGB", (32, 24))
    corrupt.add_corrupt("coat", "truncated")
    (root / "notalake" / "sub").mkdir(parents=True)
    (root / "notalake" / "readme.txt").write_text("my notes\n")
    (root / "notalake" / "sub" / "x.txt").write_text("more notes\n")
    shutil.copytree(tiny_raw_dir, root / "raw_bad")
    image_file = root / "raw_bad" / "t10k-images-idx3-ubyte.gz"
    data = bytearray(image_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: what a bad download leaves
    image_file.write_bytes(bytes(data))
    (root / "ckpt").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, root / "ckpt" / "whole.ckpt")
    data = (root / "ckpt" / "whole.ckpt").read_bytes()
    (root / "ckpt" / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "ckpt" / "text.ckpt").write_text("not a checkpoint\n")
    (root / "ckpt" / "program.pt2").write_bytes(b"an earlier export")
    (root / "bad.yaml").write_text("data:\n  batch_size: -3\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Inputs(root, tiny_lakes["train"], tiny_lakes["test"], v3_lakes["test"], tiny_raw_dir, port)


def snapshot(*roots: str | Path) -> dict[str, str]:
    """Every file and folder under ``roots``: path -> content hash ("dir" for folders)."""
    out = {}
    for root in map(Path, roots):
        for path in sorted([root, *root.rglob("*")]):
            out[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


Argv = Callable[[Inputs], list[str]]


def fit(*flags: str) -> Callable[[Inputs], list[str]]:
    """``fit`` on the tiny lakes, one batch, plus ``flags`` (formatted with the inputs)."""
    return lambda i: ["fit", *cli_base(i), *map(i.format, flags)]


def cli_base(i: Inputs) -> list[str]:
    return [
        "--config", str(CONFIGS / "fashion.yaml"),
        "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", "runs", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--data.train_url", i.train, "--data.val_url", i.test, "--data.batch_size", "16",
    ]  # fmt: skip


def run(command: str, *args: str) -> Callable[[Inputs], list[str]]:
    return lambda i: list(map(i.format, [command, *args]))


PROGRAMS: dict[str, Callable[[list[str]], Any]] = {
    "fashion_lake": cli_main,
    "fashion_lake.ingest": ingest.main,
    "fashion_lake.tools.bench": bench.cli,
    "fashion_lake.tools.readbench": readbench.cli,
    "fashion_lake.export": export.main,
}

# (id, program, argv, what the line must say: what is wrong and how to fix it)
CASES: list[tuple[str, str, Argv, str]] = [
    # --- config values (constructor checks and the parser) ---
    (
        "batch_size_0",
        "fashion_lake",
        fit("--data.batch_size", "0"),
        r"data.batch_size must be 1 or more \(rows",
    ),
    ("batch_size_text", "fashion_lake", fit("--data.batch_size", "abc"), r'"data.batch_size".*abc.*--help'),
    (
        "num_workers_negative",
        "fashion_lake",
        fit("--data.num_workers", "-1"),
        r"data.num_workers must be 0 or more",
    ),
    (
        "rotation_negative",
        "fashion_lake",
        fit("--data.rotation", "-5"),
        r"data.rotation must be from 0 to 180",
    ),
    (
        "erasing_above_1",
        "fashion_lake",
        fit("--data.erasing", "2"),
        r"data.erasing must be from 0 to 1 \(a prob",
    ),
    (
        "crop_padding_negative",
        "fashion_lake",
        fit("--data.crop_padding", "-1"),
        r"data.crop_padding must be 0",
    ),
    ("partitions_0", "fashion_lake", fit("--data.partitions", "0"), r"data.partitions must be 1 or more"),
    (
        "memory_budget_words",
        "fashion_lake",
        fit("--data.memory_budget", "lots"),
        r"data.memory_budget must be a number of bytes or a size such as 2GiB",
    ),
    (
        "memory_budget_too_small",
        "fashion_lake",
        fit("--data.memory_budget", "1MB"),
        r"data.memory_budget of 1 MiB cannot hold one batch: .* raise --data.memory_budget",
    ),
    (
        "global_batch_0",
        "fashion_lake",
        fit("--data.global_batch_size", "0"),
        r"data.global_batch_size must be 1",
    ),
    ("channels_2", "fashion_lake", fit("--data.channels", "2"), r'"data.channels".*--help'),
    ("decode_gpu", "fashion_lake", fit("--data.decode", "gpu"), r'"data.decode".*gpu'),
    ("image_size_0", "fashion_lake", fit("--data.image_size", "0"), r"data.image_size"),
    (
        "normalize_rgb_on_grey",
        "fashion_lake",
        fit("--data.normalize", "imagenet"),
        r"data.normalize.* has statistics for 3 channels, but the images have 1; give one number",
    ),
    (
        "normalize_std_0",
        "fashion_lake",
        fit("--data.normalize", "[0.5, 0]"),
        r"data.normalize: .*every std must be above 0",
    ),
    (
        "flip_with_transform",
        "fashion_lake",
        fit(
            "--data.flip",
            "true",
            "--data.train_transform",
            '{{"images": {{"class_path": "fashion_lake.data.augment.SeedTransform"}}}}',
        ),
        r"data.flip work on the whole-batch pipeline.*drop data.train_transform",
    ),
    (
        "class_path_moved",
        "fashion_lake",
        fit(
            "--data.train_transform",
            '{{"images": {{"class_path": "fashion_lake.transforms.SeedTransform"}}}}',
        ),
        r"fashion_lake\.transforms\. is now fashion_lake\.data\.augment\.",
    ),
    ("stem_unknown", "fashion_lake", fit("--model.stem", "tiny"), r'"model.stem".*tiny'),
    ("unknown_key", "fashion_lake", fit("--data.batch_sizee", "3"), r"batch_sizee"),
    ("config_missing", "fashion_lake", fit("--config", "nope.yaml"), r"nope.yaml"),
    (
        "config_bad_value",
        "fashion_lake",
        fit("--config", "{i.root}/bad.yaml"),
        r"data.batch_size must be 1 or more.*-3",
    ),
    # --- datasets: URLs, storage, columns, classes, rows ---
    (
        "train_url_typo",
        "fashion_lake",
        fit("--data.train_url", "lakes/fashon-train", "--data.raw_dir", "{i.raw}"),
        r"no Deep Lake dataset at 'lakes/fashon-train' \(data.train_url\); check the URL",
    ),
    (
        "val_url_typo",
        "fashion_lake",
        fit("--data.val_url", "lakes/fashon-test", "--data.download", "true"),
        r"no Deep Lake dataset at 'lakes/fashon-test' \(data.val_url\); check the URL",
    ),
    (
        "test_url_typo",
        "fashion_lake",
        run(
            "test",
            "--config",
            str(CONFIGS / "fashion.yaml"),
            "--data.train_url",
            "{i.train}",
            "--data.val_url",
            "{i.test}",
            "--data.test_url",
            "lakes/tset",
            "--trainer.logger",
            "false",
        ),
        r"'lakes/tset' \(data.test_url\); check the URL",
    ),
    (
        "both_missing_no_raw",
        "fashion_lake",
        fit("--data.train_url", "lakes/a", "--data.val_url", "lakes/b", "--data.download", "false"),
        r"no Deep Lake dataset at 'lakes/a' and 'lakes/b'.*--data.raw_dir DIR",
    ),
    (
        "both_missing_offline",
        "fashion_lake",
        fit("--data.train_url", "lakes/a", "--data.val_url", "lakes/b", "--data.download", "true"),
        r"no Deep Lake dataset at 'lakes/a' and 'lakes/b', and building Fashion-MNIST failed: "
        r"could not download",
    ),
    (
        "not_a_dataset",
        "fashion_lake",
        fit("--data.train_url", "{i.notalake}"),
        r"exists but is not a Deep Lake",
    ),
    (
        "s3_unreachable",
        "fashion_lake",
        fit("--data.train_url", "s3://bucket/train", "--data.creds", "{endpoint}"),
        r"cannot reach the storage of 's3://bucket/train' at 127.0.0.1:\d+.*creds.connect_timeout",
    ),
    (
        "connect_timeout_0",
        "fashion_lake",
        fit("--data.train_url", "s3://bucket/train", "--data.creds", "{endpoint_timeout0}"),
        r"creds.connect_timeout must be a number of seconds above 0",
    ),
    (
        "secret_by_value",
        "fashion_lake",
        fit("--data.creds", '{{"aws_secret_access_key": "abc"}}'),
        r"data.creds.aws_secret_access_key is given by value.*env:NAME",
    ),
    (
        "token_env_unset",
        "fashion_lake",
        fit("--data.token", "env:FASHION_LAKE_TEST_UNSET"),
        r"environment variable FASHION_LAKE_TEST_UNSET, which is not set; export it",
    ),
    (
        "no_image_column",
        "fashion_lake",
        fit("--data.image_column", "pixels"),
        r"has no column 'pixels'.*--data.image_column",
    ),
    (
        "val_fewer_classes",
        "fashion_lake",
        fit("--data.val_url", "{i.val5}"),
        r"val5' has classes \['T-shirt/top', .*'Coat'\], but the model is built for .*'Ankle boot'\]",
    ),
    (
        "float_images",
        "fashion_lake",
        fit("--data.train_url", "{i.float}"),
        r"holds float32 images; fashion_lake reads 8-bit images.*astype\('uint8'\)",
    ),
    ("empty_lake", "fashion_lake", fit("--data.train_url", "{i.empty}"), r"is empty \(0 rows\)"),
    (
        "no_class_names",
        "fashion_lake",
        fit("--data.train_url", "{i.nonames}"),
        r"no class names.*--data.class_names",
    ),
    (
        "bad_query",
        "fashion_lake",
        fit("--data.train_query", "SELEKT nothing"),
        r"query 'SELEKT nothing' on .* failed",
    ),
    (
        "labels_out_of_range",
        "fashion_lake",
        fit("--data.class_names", "[a, b]"),
        r"has label \d, outside 0..1 \(2 class names\); fix the labels or the class names",
    ),
    (
        "batch_larger_than_data",
        "fashion_lake",
        fit("--data.batch_size", "1000"),
        r"120 training rows, fewer than one global batch of 1000; lower --data.batch_size",
    ),
    # --- checkpoints ---
    (
        "ckpt_missing",
        "fashion_lake",
        fit("--ckpt_path", "runs/nope.ckpt"),
        r"'runs/nope.ckpt' does not exist; pass",
    ),
    (
        "ckpt_truncated",
        "fashion_lake",
        fit("--ckpt_path", "{i.ckpt}/truncated.ckpt"),
        r"truncated.ckpt' is truncated or not a checkpoint.*written by `fit`",
    ),
    (
        "ckpt_not_a_checkpoint",
        "fashion_lake",
        fit("--ckpt_path", "{i.ckpt}/text.ckpt"),
        r"text.ckpt' is truncated or not a checkpoint",
    ),
    # --- ingest ---
    (
        "ingest_onto_own_source",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "{i.photos}", "--overwrite", "true"),
        r"overlaps the source",
    ),
    (
        "ingest_into_own_source",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "{i.photos}/bag/lake"),
        r"overlaps the source",
    ),
    (
        "ingest_overwrite_not_a_dataset",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "{i.notalake}", "--overwrite", "true"),
        r"exists and is not a Deep Lake dataset; --overwrite replaces only a dataset",
    ),
    (
        "ingest_dest_exists",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "{i.val5}"),
        r"already exists; pass --overwrite true",
    ),
    (
        "ingest_no_folder",
        "fashion_lake.ingest",
        run("image_folder", "{i.nope}", "out"),
        r"is not a directory",
    ),
    (
        "ingest_no_images",
        "fashion_lake.ingest",
        run("image_folder", "{i.notalake}", "out"),
        r"holds no image files",
    ),
    (
        "ingest_corrupt_file",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos_corrupt}", "out"),
        r"truncated.jpg is not a readable image.*--skip_unreadable true",
    ),
    (
        "ingest_bad_mode",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "out", "--mode", "CMYK"),
        r'"mode".*CMYK',
    ),
    (
        "ingest_image_size_0",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "out", "--image_size", "0"),
        r"image_size must be a positive N",
    ),
    (
        "ingest_workers_negative",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "out", "--workers", "-1"),
        r"workers must be 0 \(this process\) or more",
    ),
    (
        "ingest_s3_unreachable",
        "fashion_lake.ingest",
        run("image_folder", "{i.photos}", "s3://bucket/out", "--creds", "{endpoint}"),
        r"cannot reach the storage",
    ),
    ("ingest_no_raw_dir", "fashion_lake.ingest", run("fashion_mnist", "out"), r"pass --raw_dir DIR"),
    (
        "ingest_checksum",
        "fashion_lake.ingest",
        run("fashion_mnist", "out", "--raw_dir", "{i.raw_bad}", "--split", "test"),
        r"checksum mismatch for .*t10k-images.*download it again",
    ),
    (
        "ingest_exists_before_reading",
        "fashion_lake.ingest",
        run("fashion_mnist", "{i.val5}", "--raw_dir", "{i.raw_bad}", "--split", "test"),
        r"val5 already exists; pass --overwrite true",
    ),
    (
        "ingest_into_raw_dir",
        "fashion_lake.ingest",
        run("fashion_mnist", "{i.raw}/lake", "--raw_dir", "{i.raw}", "--overwrite", "true"),
        r"overlaps the source",
    ),
    (
        "ingest_fm_over_not_a_dataset",
        "fashion_lake.ingest",
        run("fashion_mnist", "{i.notalake}", "--raw_dir", "{i.raw}", "--overwrite", "true"),
        r"is not a Deep Lake dataset; --overwrite replaces only a dataset",
    ),
    (
        "ingest_bad_split",
        "fashion_lake.ingest",
        run("fashion_mnist", "out", "--split", "validation"),
        r'"split".*validation',
    ),
    (
        "ingest_secret_by_value",
        "fashion_lake.ingest",
        run("fashion_mnist", "out", "--raw_dir", "{i.raw}", "--creds", '{{"aws_secret_access_key": "x"}}'),
        r"--creds.aws_secret_access_key is given by value",
    ),
    (
        "convert_not_v3",
        "fashion_lake.ingest",
        run("convert", "{i.train}", "out"),
        r"is not a Deep Lake 3 dataset \(a Deep Lake 4 dataset: use it as it is\)",
    ),
    (
        "convert_onto_source",
        "fashion_lake.ingest",
        run("convert", "{i.v3}", "{i.v3}", "--overwrite", "true"),
        r"overlaps the source",
    ),
    (
        "convert_nothing",
        "fashion_lake.ingest",
        run("convert", "{i.nope}", "out"),
        r"nothing Deep Lake can read",
    ),
    # --- export ---
    (
        "export_missing_ckpt",
        "fashion_lake.export",
        lambda i: ["runs/nope.ckpt", "out.pt2"],
        r"does not exist; pass",
    ),
    (
        "export_truncated_ckpt",
        "fashion_lake.export",
        run("{i.ckpt}/truncated.ckpt", "out.pt2"),
        r"truncated.ckpt' is truncated or not a checkpoint",
    ),
    (
        "export_not_ours",
        "fashion_lake.export",
        run("{i.ckpt}/whole.ckpt", "out.pt2"),
        r"is not a checkpoint written by `python -m fashion_lake fit`",
    ),
    (
        "export_bad_suffix",
        "fashion_lake.export",
        run("{i.ckpt}/whole.ckpt", "out.zip"),
        r"OUT must end in .pt2 \(torch.export\) or .onnx",
    ),
    (
        "export_existing_output",
        "fashion_lake.export",
        run("{i.ckpt}/whole.ckpt", "{i.ckpt}/program.pt2"),
        r"program.pt2 already exist\(s\); pass --overwrite",
    ),
    ("export_no_out", "fashion_lake.export", run("{i.ckpt}/whole.ckpt"), r"required: out"),
    # --- the benchmark ---
    (
        "bench_epochs_0",
        "fashion_lake.tools.bench",
        lambda i: ["--epochs", "0"],
        r"--epochs and --slow_batches must be 1",
    ),
    ("bench_ingest_1", "fashion_lake.tools.bench", lambda i: ["--ingest", "1"], r"--ingest must be \d+ or"),
    ("bench_batch_text", "fashion_lake.tools.bench", lambda i: ["--batch_size", "x"], r'"batch_size".*x'),
    (
        "readbench_repeats_0",
        "fashion_lake.tools.readbench",
        lambda i: ["--repeats", "0"],
        r"--repeats must be 1 or more, not 0",
    ),
]


@pytest.mark.parametrize(("program", "argv", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(
    program: str,
    argv: Argv,
    says: str,
    inputs: Inputs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASHION_LAKE_RAW_DIR", raising=False)
    monkeypatch.delenv("FASHION_LAKE_DEBUG", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where --data.download would write
    monkeypatch.setattr(ingest, "FASHION_MNIST_MIRRORS", [f"http://127.0.0.1:{inputs.closed_port}/"])
    args = [
        a.replace("{endpoint}", inputs.endpoint()).replace(
            "{endpoint_timeout0}", inputs.endpoint(connect_timeout="0")
        )
        for a in argv(inputs)
    ]
    watched = [inputs.root, inputs.train, inputs.test, inputs.v3, inputs.raw, CONFIGS]
    before = snapshot(*watched)

    with pytest.raises(SystemExit) as exit_info:
        PROGRAMS[program](args)

    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert exit_info.value.code == 2, err[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"{program}: error: "), err[-3000:]
    assert re.search(says, errors[0]), errors[0]
    assert snapshot(*watched) == before, "an input was created, changed or deleted"
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*")), "a half-written output"
