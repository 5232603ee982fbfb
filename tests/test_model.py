from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fashion_lake import FashionMnistModule, model
from fashion_lake.data.augment import BatchTransform, rotate
from fashion_lake.model import ModelError, build_model


def test_build_model_is_a_one_channel_resnet18() -> None:
    net = build_model(num_classes=7, in_channels=1)
    assert net.conv1.in_channels == 1 and net.conv1.kernel_size == (7, 7) and net.conv1.bias is None
    assert net.fc.out_features == 7
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 7)


def test_pretrained_offline_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(model, "PRETRAINED_URL", f"http://127.0.0.1:{closed_port}/resnet18.pth")
    with pytest.raises(
        ModelError, match="could not download the ImageNet ResNet18 weights.*pretrained false"
    ):
        build_model(10, pretrained=True)


def test_module_steps_and_predicts() -> None:
    module = FashionMnistModule(num_classes=3, class_names=["a", "b", "c"])
    batch = {
        "images": torch.randn(4, 1, 28, 28),
        "labels": torch.tensor([0, 1, 2, 1]),
        "index": torch.arange(4),
    }
    module.eval()
    out = module.predict_step(batch, 0)
    assert out["index"].tolist() == [0, 1, 2, 3]
    assert all(name in {"a", "b", "c"} for name in out["class_name"])
    assert [module.class_names[i] for i in out["class_id"].tolist()] == out["class_name"]
    assert torch.all((out["probability"] > 0) & (out["probability"] <= 1))
    with pytest.raises(ModelError, match="2 class names for 3 classes"):
        FashionMnistModule(num_classes=3, class_names=["a", "b"])


# the step is called without a Trainer, whose loop its logging needs: Lightning says so and logs nothing
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`:UserWarning")
def test_ranks_loss_weighs_every_row_of_the_global_batch_alike() -> None:
    """Two ranks with 8 and 4 rows of a 12-row global batch: the mean of their gradients (as DDP
    takes it), each loss weighed by the batch's ``rank_share``, is the whole batch's gradient."""
    torch.manual_seed(0)
    module = FashionMnistModule(num_classes=3).eval()  # BatchNorm's running statistics: rows apart
    images, labels = torch.rand(12, 1, 28, 28), torch.randint(0, 3, (12,))

    def gradients(rows: slice, share: float | None) -> list[torch.Tensor]:
        batch = {"images": images[rows], "labels": labels[rows], "index": torch.arange(12)[rows]}
        if share is not None:
            batch["rank_share"] = torch.tensor(share)
        module.zero_grad()
        module.training_step(batch, 0)["loss"].backward()
        return [p.grad.clone() for p in module.parameters()]

    whole = gradients(slice(0, 12), None)
    ranks = [gradients(slice(0, 8), 8 * 2 / 12), gradients(slice(8, 12), 4 * 2 / 12)]
    for expected, first, second in zip(whole, *ranks, strict=True):
        torch.testing.assert_close((first + second) / 2, expected)


def test_batch_rotation_is_per_sample_and_seeded() -> None:
    images = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 13:15, 4:24] = 255  # a horizontal bar
    transform = BatchTransform(degrees=20)
    a = transform(images, train=True, generator=torch.Generator().manual_seed(0))
    b = transform(images, train=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert len({tuple(x.flatten().tolist()) for x in a}) > 1, "every image needs its own angle"
    unrotated = transform(images, train=False)
    assert not torch.equal(a, unrotated)
    torch.testing.assert_close(unrotated, images.float() / 255)


def test_rotate_turns_counter_clockwise_like_torchvision() -> None:
    from torchvision.transforms.v2.functional import rotate as tv_rotate

    x = torch.zeros(1, 1, 28, 28)
    x[:, :, 13:15, 4:24] = 1.0
    gen = torch.Generator().manual_seed(1)
    ours = rotate(x, degrees=20, generator=gen)
    angle = ((torch.rand(1, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 20).item()
    theirs = tv_rotate(x, angle)
    assert (ours != theirs).float().mean() < 0.03  # nearest-neighbour rounding at the edges only


def test_the_config_reference_is_current() -> None:
    from pathlib import Path

    from fashion_lake.tools.reference import BEGIN, END, config_reference

    page = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    block = page[page.index(BEGIN) + len(BEGIN) : page.index(END)].strip()
    assert block == config_reference(), "run: python -m fashion_lake.tools.reference --write docs/config.md"


def _stem_output(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the first residual block sees."""
    return net.maxpool(net.relu(net.bn1(net.conv1(x))))


def test_small_stem_keeps_28x28_for_the_blocks() -> None:
    x = torch.zeros(2, 1, 28, 28)
    small, imagenet = build_model(10, stem="small"), build_model(10)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.bias is None
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert _stem_output(small, x).shape == (2, 64, 28, 28)
    assert _stem_output(imagenet, x).shape == (2, 64, 7, 7)
    assert small.layer4(small.layer3(small.layer2(small.layer1(_stem_output(small, x))))).shape[-2:] == (4, 4)
    assert small(x).shape == (2, 10)
    with pytest.raises(ModelError, match="model.stem must be one of imagenet, small, got 'tiny'"):
        build_model(10, stem="tiny")  # type: ignore[arg-type]


@pytest.fixture
def imagenet_state(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Stand-in ImageNet weights (the download is not under test): random, unlike a fresh init."""
    from torchvision.models import resnet18

    torch.manual_seed(7)
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in resnet18().state_dict().items()
    }
    monkeypatch.setattr(model, "_imagenet_state", lambda: state)
    return state


@pytest.mark.parametrize("stem", ["imagenet", "small"])
def test_pretrained_keeps_the_blocks_with_either_stem(imagenet_state: dict, stem: str) -> None:
    net = build_model(10, in_channels=1, pretrained=True, stem=stem)
    got = net.state_dict()
    blocks = [k for k in imagenet_state if k.startswith("layer")]
    assert len(blocks) > 80 and all(torch.equal(got[k], imagenet_state[k]) for k in blocks)
    rgb = imagenet_state["conv1.weight"]
    if stem == "imagenet":  # the stem's filters summed over RGB, its batch norm kept
        torch.testing.assert_close(got["conv1.weight"], rgb.sum(1, keepdim=True))
        assert torch.equal(got["bn1.weight"], imagenet_state["bn1.weight"])
    else:  # a fresh 3x3 stem and batch norm
        assert got["conv1.weight"].shape == (64, 1, 3, 3)
        assert torch.equal(got["bn1.weight"], torch.ones(64)) and torch.equal(
            got["bn1.running_mean"], torch.zeros(64)
        )
    assert got["fc.weight"].shape == (10, 512)


def test_default_model_is_unchanged() -> None:
    """The new options left at their defaults build (and initialise) the same network as before."""
    torch.manual_seed(3)
    before = build_model(10, 1, False)
    torch.manual_seed(3)
    module = FashionMnistModule(num_classes=10)
    assert module.hparams.stem == "imagenet" and module.memory_format == torch.contiguous_format
    for key, value in before.state_dict().items():
        assert torch.equal(module.net.state_dict()[key], value), key


def test_channels_last_same_logits_and_state_keys() -> None:
    torch.manual_seed(0)
    plain = FashionMnistModule(num_classes=10, stem="small").eval()
    fast = FashionMnistModule(num_classes=10, stem="small", channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_compile_keeps_checkpoints_compatible() -> None:
    compiled = FashionMnistModule(num_classes=10, compile=True)
    plain = FashionMnistModule(num_classes=10)
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict())
