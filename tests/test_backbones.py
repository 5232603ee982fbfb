"""``model.backbone``: any torchvision classification model, adapted to the data's channels and classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import get_model

from fashion_lake import FashionMnistModule, model
from fashion_lake.cli import cli_main
from fashion_lake.errors import ConfigError
from fashion_lake.model import ModelError, build_backbone


def _first_conv(net: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(
    ("name", "size"), [("resnet50", 28), ("efficientnet_b0", 28), ("convnext_tiny", 32), ("vit_b_16", 224)]
)
def test_backbone_takes_the_datas_channels_and_classes(name: str, size: int) -> None:
    net = build_backbone(name, num_classes=4, in_channels=1).eval()
    assert _first_conv(net).in_channels == 1
    with torch.no_grad():
        assert net(torch.zeros(2, 1, size, size)).shape == (2, 4)
    assert _first_conv(build_backbone(name, 4, in_channels=3)).in_channels == 3


def test_pretrained_backbone_keeps_the_imagenet_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in ImageNet weights (the download is not under test): random, unlike a fresh init."""
    torch.manual_seed(5)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in get_model("mobilenet_v3_small").state_dict().items()}  # fmt: skip
    monkeypatch.setattr(model, "_download_state", lambda url, name: state)
    net = build_backbone("mobilenet_v3_small", num_classes=5, in_channels=1, pretrained=True)
    got = net.state_dict()
    torch.testing.assert_close(got["features.0.0.weight"], state["features.0.0.weight"].sum(1, keepdim=True))
    assert torch.equal(got["features.5.block.0.0.weight"], state["features.5.block.0.0.weight"])
    assert got["classifier.3.weight"].shape == (5, 1024)


def test_pretrained_offline_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(model, "weights_url", lambda name: f"http://127.0.0.1:{closed_port}/{name}.pth")
    with pytest.raises(
        ConfigError, match="could not download the ImageNet efficientnet_b0 weights.*pretrained false"
    ):
        build_backbone("efficientnet_b0", 10, pretrained=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet5O"}, "model.backbone 'resnet5O' is not a torchvision classification model"),
        ({"backbone": "inception_v3"}, "model.backbone inception_v3 is not supported"),
        ({"backbone": "resnet50", "stem": "small"}, "model.stem small is for the resnet18 backbone"),
    ],
)
def test_bad_backbone_is_a_config_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message) as error:
        FashionMnistModule(num_classes=10, **kwargs)
    assert isinstance(error.value, ConfigError)


def test_cli_fits_and_validates_another_backbone(cli_args: list[str]) -> None:
    args = [*cli_args, "--model.backbone", "mobilenet_v3_small"]
    fit = cli_main(["fit", *args])
    assert fit.trainer.global_step == 2 and _first_conv(fit.model.net).in_channels == 1
    again = cli_main(["validate", *args, "--ckpt_path", fit.trainer.checkpoint_callback.last_model_path])
    assert 0.0 <= float(again.trainer.callback_metrics["val_acc"]) <= 1.0
