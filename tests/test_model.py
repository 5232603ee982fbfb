from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fashion_lake import FashionMnistModule, model
from fashion_lake.model import ModelError, build_model
from fashion_lake.transforms import BatchTransform, rotate


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
    torch.testing.assert_close(unrotated, (images.float() / 255 - 0.5) / 0.5)


def test_rotate_turns_counter_clockwise_like_torchvision() -> None:
    from torchvision.transforms.v2.functional import rotate as tv_rotate

    x = torch.zeros(1, 1, 28, 28)
    x[:, :, 13:15, 4:24] = 1.0
    gen = torch.Generator().manual_seed(1)
    ours = rotate(x, degrees=20, generator=gen)
    angle = ((torch.rand(1, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 20).item()
    theirs = tv_rotate(x, angle)
    assert (ours != theirs).float().mean() < 0.03  # nearest-neighbour rounding at the edges only


def test_readme_config_reference_is_current() -> None:
    from pathlib import Path

    from fashion_lake.reference import BEGIN, END, config_reference

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)].strip()
    assert block == config_reference(), "run: python -m fashion_lake.reference --write README.md"
