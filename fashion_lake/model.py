"""The classifier: a pure ``build_model`` and a thin LightningModule around it."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.models import ResNet18_Weights, resnet18

from fashion_lake.errors import FashionLakeError

PRETRAINED_URL = ResNet18_Weights.IMAGENET1K_V1.url


class ModelError(FashionLakeError):
    """The model cannot be built as configured; the message says why and what to do."""


def _imagenet_state() -> dict[str, torch.Tensor]:
    try:
        return torch.hub.load_state_dict_from_url(PRETRAINED_URL, progress=False)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        raise ModelError(
            f"could not download the ImageNet ResNet18 weights from {PRETRAINED_URL} ({e}). "
            "Offline? Set --model.pretrained false, or put the file in "
            f"{torch.hub.get_dir()}/checkpoints/ on this machine."
        ) from e


Stem = Literal["imagenet", "small"]
STEMS: tuple[str, ...] = ("imagenet", "small")


def build_model(
    num_classes: int, in_channels: int = 1, pretrained: bool = False, stem: Stem = "imagenet"
) -> nn.Module:
    """ResNet18 with a new ``in_channels`` stem and a ``num_classes`` head.

    ``stem="imagenet"``, as in the Deep Lake tutorial: ``conv1 = Conv2d(in_channels, 64, 7, 2, 3)``
    and the max-pool, which shrink a 28x28 image to 7x7 before the first block. ``stem="small"``,
    as ResNets for small images: ``conv1 = Conv2d(in_channels, 64, 3, 1, 1)`` and no max-pool, so
    the first block sees all 28x28 pixels (about 14x the FLOPs of a training step).

    With ``pretrained`` every ImageNet weight but the head is loaded. The ImageNet stem's 7x7
    filters are summed over RGB (or kept, for 3 channels) so the new stem starts from them. The
    small stem cannot reuse them (its 3x3 stride-1 filters see pixels, not 7x7 patches of a
    224x224 photo), so ``conv1`` and the ``bn1`` that normalises its channels start fresh and
    ``layer1``..``layer4`` are kept.
    """
    if num_classes < 2 or in_channels < 1:
        raise ModelError(f"need num_classes >= 2 and in_channels >= 1, got {num_classes} and {in_channels}")
    if stem not in STEMS:
        raise ModelError(f"model.stem must be one of {', '.join(STEMS)}, got {stem!r}")
    net = resnet18(weights=None)
    if pretrained:
        net.load_state_dict(_imagenet_state())
    if stem == "small":
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        net.bn1 = nn.BatchNorm2d(64)
        net.maxpool = nn.Identity()
    else:
        rgb_stem = net.conv1.weight.detach()
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if pretrained:
            with torch.no_grad():
                summed = rgb_stem.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
                net.conv1.weight.copy_(rgb_stem if in_channels == 3 else summed)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


class FashionMnistModule(pl.LightningModule):
    """Image classification with a 1-channel ResNet18.

    Args:
        num_classes: Size of the classifier head (linked from the data module).
        class_names: Class names, for predictions (linked from the data module).
        in_channels: Image channels (linked from the data module).
        pretrained: Start from ImageNet weights (downloads them once).
        optimizer: Any ``torch.optim`` optimizer, e.g.
            ``{class_path: torch.optim.SGD, init_args: {lr: 0.1}}``.
        lr_schedule: ``one_cycle`` (warm up to the optimizer's lr, then anneal), ``cosine``
            (anneal from it) or ``constant``; steps come from the Trainer's run length.
        label_smoothing: Cross-entropy label smoothing.
        stem: ``imagenet`` (the tutorial's 7x7 stride-2 conv and max-pool: 28x28 -> 7x7) or
            ``small`` (a 3x3 stride-1 conv, no max-pool: the blocks see 28x28, as in ResNets for
            small images; about 14x the FLOPs). With ``pretrained`` the small stem starts
            fresh and the blocks are loaded.
        channels_last: Keep weights and activations in channels-last memory order, which
            tensor-core GPUs convolve faster (with ``trainer.precision: bf16-mixed``); the
            same numbers up to floating-point rounding.
        compile: ``torch.compile`` the network: usually faster steps on a GPU, after compiling
            at the start (which counts in the training time); checkpoints are the same either way.
    """

    def __init__(
        self,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        in_channels: int = 1,
        pretrained: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Literal["one_cycle", "cosine", "constant"] = "one_cycle",
        label_smoothing: float = 0.0,
        stem: Stem = "imagenet",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ModelError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.net = build_model(num_classes, in_channels, pretrained, stem)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # kept by .to(device) and checkpoint loads
        if compile:
            self.net.compile()  # in place: the state dict keeps its keys, unlike torch.compile(net)
        self.optimizer = optimizer
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: dict[str, torch.Tensor] = {}  # last epoch's, for reports

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    def _count_skipped(self, batch: dict, stage: str) -> None:
        if "skipped" in batch:  # corrupt rows the data module skipped (--data.skip_corrupt)
            skipped = batch["skipped"].float()
            self.log(f"{stage}_skipped_rows", skipped, reduce_fx="sum", on_step=False, on_epoch=True,
                     batch_size=1, sync_dist=True)  # fmt: skip

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._count_skipped(batch, "train")
        images, labels = batch["images"], batch["labels"].long()
        logits = self(images)
        if not len(labels):  # every row skipped as corrupt: a zero loss keeps DDP's gradients in step
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits, labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        # Batches may be empty on some ranks (see sampler.eval_batches) or after skipping corrupt
        # rows: such a batch updates no metric, and the metrics still sum exactly over ranks.
        self._count_skipped(batch, stage)
        labels = batch["labels"].long()
        accuracy, mean_loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        if len(labels):
            logits = self(batch["images"])
            accuracy.update(logits, labels)
            mean_loss.update(F.cross_entropy(logits, labels, reduction="none"))
            getattr(self, f"{stage}_confusion").update(logits.argmax(dim=1), labels)
        self.log(f"{stage}_acc", accuracy, prog_bar=True)
        self.log(f"{stage}_loss", mean_loss)

    def _keep_confusion(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_confusion")
        self.confusion[stage] = metric.compute().cpu()  # synced over ranks: every rank calls it
        metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._keep_confusion("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._keep_confusion("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probabilities = self(batch["images"]).softmax(dim=1)
        probability, class_id = probabilities.max(dim=1)
        return {
            "index": batch["index"],
            "class_id": class_id,
            "class_name": [self.class_names[i] for i in class_id.tolist()],
            "probability": probability,
        }

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer(self.parameters())
        steps = int(self.trainer.estimated_stepping_batches)
        if self.hparams.lr_schedule == "constant":
            return {"optimizer": optimizer}
        if self.hparams.lr_schedule == "one_cycle":
            peak = [group["lr"] for group in optimizer.param_groups]
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=max(steps, 1))
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
