"""Weight EMA in the best recipe (Lightning's EMAWeightAveraging) and flip test-time augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging

from fashion_lake import FashionMnistModule
from fashion_lake.cli import cli_main

CONFIGS = Path(__file__).parents[1] / "configs"
BEST_ON_CPU = ["--config", str(CONFIGS / "best.yaml"), "--trainer.precision", "32-true",
               "--data.batch_size", "16", "--trainer.max_epochs", "1", "--data.num_workers", "0"]  # fmt: skip


def _val_loss(args: list[str], ckpt: Path) -> float:
    return float(cli_main(["validate", *args, "--ckpt_path", str(ckpt)]).trainer.callback_metrics["val_loss"])


def test_best_recipe_evaluates_the_averaged_weights(cli_args: list[str], tmp_path: Path) -> None:
    args = [*cli_args, *BEST_ON_CPU]
    fit = cli_main(["fit", *args])
    assert any(isinstance(c, EMAWeightAveraging) for c in fit.trainer.callbacks)
    fit_loss = float(fit.trainer.callback_metrics["val_loss"])
    last = Path(fit.trainer.checkpoint_callback.last_model_path)
    checkpoint = torch.load(last, weights_only=False)
    averaged, trained = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)
    # the checkpoint holds the averaged weights, which are what fit's validation scored
    assert _val_loss(args, last) == pytest.approx(fit_loss, rel=1e-5)
    as_trained = tmp_path / "trained.ckpt"
    torch.save({**checkpoint, "state_dict": trained}, as_trained)
    assert _val_loss(args, as_trained) != pytest.approx(fit_loss, rel=1e-5)


def test_flip_tta_averages_an_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    plain = FashionMnistModule(num_classes=4).eval()
    tta = FashionMnistModule(num_classes=4, tta=True).eval()
    tta.load_state_dict(plain.state_dict())
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = (plain(images).softmax(1) + plain(images.flip(-1)).softmax(1)) / 2
        torch.testing.assert_close(tta.probabilities(images), expected)
        torch.testing.assert_close(tta.probabilities(images.flip(-1)), expected)  # mirror-invariant
        out = tta.predict_step({"images": images, "index": torch.arange(6)}, 0)
    torch.testing.assert_close(out["probability"], expected.max(1).values)
    assert "tta" not in tta.hparams, (
        "an evaluation option: not saved, so --model.tta applies to any checkpoint"
    )


def test_validate_with_tta_on_a_checkpoint(fitted_checkpoint: str, cli_args: list[str]) -> None:
    plain = cli_main(["validate", *cli_args, "--ckpt_path", fitted_checkpoint])
    tta = cli_main(["validate", *cli_args, "--ckpt_path", fitted_checkpoint, "--model.tta", "true"])
    assert tta.model.tta and not plain.model.tta
    loss = (
        float(plain.trainer.callback_metrics["val_loss"]),
        float(tta.trainer.callback_metrics["val_loss"]),
    )
    assert loss[0] != pytest.approx(loss[1], rel=1e-6)
