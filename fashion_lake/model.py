"""The classifier: a pure ``build_model`` and a thin LightningModule around it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.models import ResNet18_Weights, get_model, get_model_weights, list_models, resnet18

from fashion_lake.data.augment import IMAGENET_STATS, per_channel
from fashion_lake.errors import ConfigError

PRETRAINED_URL = ResNet18_Weights.IMAGENET1K_V1.url


class ModelError(ConfigError):
    """The model cannot be built as configured; the message says why and what to do."""


Stats = float | list[float]


class Normalize(nn.Module):
    """uint8 images (as loaders yield them) or float ones in [0, 1] -> ``(x - mean) / std``.

    Part of the model rather than the data pipeline: the statistics are what the network's
    weights expect (ImageNet's for pretrained backbones), so a checkpoint or an exported model
    takes raw pixels. The buffers are not saved: checkpoints written before they existed load.
    """

    def __init__(self, mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5) -> None:
        super().__init__()
        mean_t, std_t = per_channel(mean), per_channel(std)
        if not bool((std_t > 0).all()):
            raise ModelError(f"normalize std must be > 0, got {std}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def resolve_normalize(normalize: tuple[Stats, Stats] | Literal["imagenet"]) -> tuple[Stats, Stats]:
    """``"imagenet"`` -> ImageNet's (mean, std); a (mean, std) pair as it is."""
    if normalize == "imagenet":
        return IMAGENET_STATS
    if isinstance(normalize, str) or len(normalize) != 2:
        raise ModelError(f"normalize must be 'imagenet' or [mean, std], got {normalize!r}")
    return (normalize[0], normalize[1])


def _download_state(url: str, name: str) -> dict[str, torch.Tensor]:
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        raise ModelError(
            f"could not download the ImageNet {name} weights from {url} ({e}). "
            "Offline? Set --model.pretrained false, or put the file in "
            f"{torch.hub.get_dir()}/checkpoints/ on this machine."
        ) from e


def _imagenet_state() -> dict[str, torch.Tensor]:
    return _download_state(PRETRAINED_URL, "ResNet18")


# Image sizes each torchvision family needs (smallest side, pixels; measured on torchvision 0.29):
# 28 and up: resnet*, resnext*, wide_resnet*, regnet_*, mobilenet_*, efficientnet_*, mnasnet*,
# shufflenet_*, swin_*; 32 and up: convnext_*, densenet*, vgg*; 64 and up: alexnet; exactly 224:
# vit_* and maxvit_t (their position embeddings / windows are sized for it).
UNSUPPORTED = {
    "googlenet": "its auxiliary heads",
    "inception_v3": "its auxiliary heads",
    "squeezenet1_0": "its convolutional head",
    "squeezenet1_1": "its convolutional head",
}


def weights_url(name: str) -> str:
    """Where torchvision downloads ``name``'s default ImageNet weights from."""
    return get_model_weights(name).DEFAULT.url


def _replace(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def build_backbone(name: str, num_classes: int, in_channels: int = 1, pretrained: bool = False) -> nn.Module:
    """Any torchvision classification model by name (``torchvision.models.get_model``), with its
    first convolution taking ``in_channels`` and its last linear layer ``num_classes`` outputs.

    With ``pretrained`` it starts from the model's default ImageNet weights; the first
    convolution's filters are then summed over RGB for other channel counts, as ``build_model``.
    """
    known = list_models(module=torchvision.models)
    if name not in known:
        raise ModelError(
            f"model.backbone {name!r} is not a torchvision classification model; pick one of "
            "torchvision.models.list_models(), e.g. resnet50, efficientnet_b0, convnext_tiny, vit_b_16."
        )
    if name in UNSUPPORTED:
        raise ModelError(f"model.backbone {name} is not supported ({UNSUPPORTED[name]}); pick another model.")
    net = get_model(name, weights=None)
    if pretrained:
        net.load_state_dict(_download_state(weights_url(name), name))
    convs = [(path, m) for path, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(path, m) for path, m in net.named_modules() if isinstance(m, nn.Linear)]
    path, first = convs[0]
    if in_channels != first.in_channels:
        conv = nn.Conv2d(
            in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
            first.dilation, first.groups, first.bias is not None,
        )  # fmt: skip
        if pretrained:
            with torch.no_grad():
                rgb = first.weight.detach()
                conv.weight.copy_(rgb.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
                if first.bias is not None:
                    conv.bias.copy_(first.bias)
        _replace(net, path, conv)
    path, head = linears[-1]
    _replace(net, path, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    return net


INPUT_SHAPE_KEY = "fashion_lake_input_shape"  # (C, H, W) of the training batches, in checkpoints
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
    """Image classification with ResNet18 (the tutorial's) or any torchvision classification model.

    Args:
        num_classes: Size of the classifier head (linked from the data module).
        class_names: Class names, for predictions (linked from the data module).
        in_channels: Image channels (linked from the data module).
        pretrained: Start from the backbone's ImageNet weights (downloads them once); use
            ``data.normalize: imagenet`` with them.
        backbone: Any torchvision classification model by name (``torchvision.models.get_model``,
            e.g. ``resnet50``, ``efficientnet_b0``, ``convnext_tiny``, ``vit_b_16``), its first
            layer adapted to the image channels and its head to the classes; ``resnet18`` (the
            default) is the tutorial's, with ``stem``. Image sizes: 28+ pixels for resnet*,
            regnet_*, mobilenet_*, efficientnet_*, mnasnet*, shufflenet_*, swin_*; 32+ for
            convnext_*, densenet*, vgg*; 64+ for alexnet; exactly 224 for vit_* and maxvit_t
            (``data.image_size``).
        optimizer: Any ``torch.optim`` optimizer, e.g.
            ``{class_path: torch.optim.SGD, init_args: {lr: 0.1}}``.
        lr: Learning rate replacing the optimizer's (``null``: the optimizer's); what
            ``LearningRateFinder`` sets.
        lr_schedule: ``one_cycle`` (warm up to the learning rate, then anneal), ``cosine``
            (anneal from it) or ``constant``; steps come from the Trainer's run length, refitted
            when it changes (a resume with more epochs or another batch size, ``BatchSizeFinder``).
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
        normalize: ``(mean, std)`` the model subtracts and divides by after scaling its uint8
            input to [0, 1] (linked from ``data.normalize``): each a number or one per channel,
            or ``imagenet``, what pretrained backbones expect.
        tta: Test-time augmentation in validate, test and predict: average the class
            probabilities of each image and its left-right mirror image (training is unchanged).
    """

    def __init__(
        self,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        in_channels: int = 1,
        pretrained: bool = False,
        backbone: str = "resnet18",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = None,
        lr_schedule: Literal["one_cycle", "cosine", "constant"] = "one_cycle",
        label_smoothing: float = 0.0,
        stem: Stem = "imagenet",
        channels_last: bool = False,
        compile: bool = False,
        normalize: tuple[Stats, Stats] | Literal["imagenet"] = (0.5, 0.5),
        tta: bool = False,
    ) -> None:
        super().__init__()
        # tta is how to evaluate, not what was trained: left out of checkpoints, whose saved
        # hyper-parameters would otherwise override --model.tta when evaluating one
        self.save_hyperparameters(ignore=["optimizer", "tta"])
        self.tta = tta
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ModelError(f"{len(self.class_names)} class names for {num_classes} classes")
        if lr is not None and lr <= 0:
            raise ModelError(f"model.lr must be > 0 (or null: the optimizer's), got {lr}")
        self.normalize = Normalize(*resolve_normalize(normalize))
        stats = {self.normalize.mean.shape[1], self.normalize.std.shape[1]}
        if not stats <= {1, in_channels}:
            raise ModelError(
                f"normalize (data.normalize, or model.normalize in Python) has statistics for {max(stats)} "
                f"channels, but the images have {in_channels}; give one number or {in_channels} (imagenet "
                "statistics are for RGB images)."
            )
        if backbone == "resnet18":  # the tutorial's network and stems; its checkpoints' keys
            self.net = build_model(num_classes, in_channels, pretrained, stem)
        elif stem != "imagenet":
            raise ModelError(f"model.stem {stem} is for the resnet18 backbone; drop it for {backbone}.")
        else:
            self.net = build_backbone(backbone, num_classes, in_channels, pretrained)
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
        self.input_shape: tuple[int, ...] | None = None  # (C, H, W) trained on, saved for export

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of uint8 images as loaders yield them (or float ones in [0, 1]), ``(N, C, H, W)``."""
        x = self.normalize(images)
        return self.net(x.contiguous(memory_format=self.memory_format))

    def log_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Log class probabilities; with ``tta`` those of the mean of the image's and its mirror's."""
        log_p = F.log_softmax(self(images), dim=1)
        if self.tta:
            mirrored = F.log_softmax(self(images.flip(-1)), dim=1)
            log_p = torch.logsumexp(torch.stack([log_p, mirrored]), dim=0) - math.log(2.0)
        return log_p

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of uint8 images (as ``predict`` and exported programs give them)."""
        return self.log_probabilities(images).exp() if self.tta else self(images).softmax(dim=1)

    def _count_skipped(self, batch: dict, stage: str) -> None:
        if "skipped" in batch:  # corrupt rows the data module skipped (--data.skip_corrupt)
            skipped = batch["skipped"].float()
            self.log(f"{stage}_skipped_rows", skipped, reduce_fx="sum", on_step=False, on_epoch=True,
                     batch_size=1, sync_dist=True)  # fmt: skip

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        self._count_skipped(batch, "train")
        images, labels = batch["images"], batch["labels"].long()
        self.input_shape = tuple(images.shape[1:])
        logits = self(images)
        if not len(labels):  # every row skipped as corrupt: a zero loss keeps DDP's gradients in step
            return {"loss": logits.sum() * 0.0}
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits, labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        # DDP averages the ranks' gradients: where ranks' shares of a global batch differ (small
        # lakes, partitions cut at chunk ends), each weighs by its share, so every row counts alike
        weighted = loss * batch["rank_share"] if "rank_share" in batch else loss
        return {"loss": weighted, "train_loss": loss.detach()}  # the rank's mean, for reports

    def _evaluate(self, batch: dict, stage: str) -> None:
        # Batches may be empty on some ranks (see sampler.eval_batches) or after skipping corrupt
        # rows: such a batch updates no metric, and the metrics still sum exactly over ranks.
        self._count_skipped(batch, stage)
        labels = batch["labels"].long()
        accuracy, mean_loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        if len(labels):
            # log-probabilities are logits too: cross-entropy and accuracy read them the same
            logits = self.log_probabilities(batch["images"]) if self.tta else self(batch["images"])
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
        probability, class_id = self.probabilities(batch["images"]).max(dim=1)
        out = {
            "index": batch["index"],
            "class_id": class_id,
            "class_name": [self.class_names[i] for i in class_id.tolist()],
            "probability": probability,
        }
        if "path" in batch:  # image files (data.predict_url naming a folder or file)
            out["path"] = batch["path"]
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.input_shape is not None:  # what an exported program takes (fashion_lake.export)
            checkpoint[INPUT_SHAPE_KEY] = list(self.input_shape)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if INPUT_SHAPE_KEY in checkpoint:
            self.input_shape = tuple(checkpoint[INPUT_SHAPE_KEY])

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer(self.parameters())
        if self.hparams.lr is not None:  # set by the user or by LearningRateFinder
            for group in optimizer.param_groups:
                group["lr"] = self.hparams.lr
        total = self.trainer.estimated_stepping_batches
        scheduler = make_scheduler(self.hparams.lr_schedule, optimizer, total)
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Fit the schedule to this run, now that its length and learning rate are final.

        ``configure_optimizers`` ran before a checkpoint restored the old schedule (built for the
        old run's length: a resume with more epochs or another global batch) and before tuners
        (``BatchSizeFinder`` changes the length, ``LearningRateFinder`` the learning rate). The
        schedule is rebuilt, when either differs, at the step the run is at.
        """
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            total = self.trainer.estimated_stepping_batches
            if schedule_fits(scheduler, total, self.hparams.lr):
                continue
            config.scheduler = make_scheduler(
                self.hparams.lr_schedule, scheduler.optimizer, total, scheduler.last_epoch, self.hparams.lr
            )


def _schedule_length(total_steps: float, kind: str) -> int:
    if not math.isfinite(total_steps):
        raise ModelError(
            f"model.lr_schedule {kind} spreads over the run's length, which is unknown (no max_epochs nor "
            "max_steps); set --trainer.max_epochs or --trainer.max_steps (max_time may still stop it "
            "earlier), or use --model.lr_schedule constant."
        )
    return max(int(total_steps), 1)


def make_scheduler(
    kind: str, optimizer: torch.optim.Optimizer, total_steps: float, done: int = 0, peak: float | None = None
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The ``kind`` schedule over ``total_steps`` optimizer steps, positioned after ``done`` of them.

    ``peak`` replaces the learning rate the schedule starts from (cosine) or warms up to (one
    cycle); by default the optimizer's, or the one an earlier schedule of this optimizer used.
    """
    if kind == "constant":
        return None
    if kind not in ("one_cycle", "cosine"):
        raise ModelError(f"model.lr_schedule must be one_cycle, cosine or constant, got {kind!r}")
    total = max(_schedule_length(total_steps, kind), done)  # a schedule cannot end before its step
    for group in optimizer.param_groups:
        top = peak if peak is not None else group.get("max_lr", group.get("initial_lr", group["lr"]))
        if done == 0:  # a fresh schedule sets its keys from ``lr``
            for key in ("initial_lr", "max_lr", "min_lr"):
                group.pop(key, None)
            group["lr"] = top
        elif kind == "one_cycle":  # OneCycleLR's defaults: div_factor 25, final_div_factor 1e4
            group.update(max_lr=top, initial_lr=top / 25, min_lr=top / 25 / 1e4)
        else:
            group["initial_lr"] = top
    # last_epoch = done - 1: the constructor's first step lands on step ``done``, in closed form
    if kind == "one_cycle":
        peaks = [group.get("max_lr", group["lr"]) for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=total, last_epoch=done - 1
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, last_epoch=done - 1)


def schedule_fits(scheduler: object, total_steps: float, peak: float | None) -> bool:
    """Whether ``scheduler`` (one of ``make_scheduler``'s) spans ``total_steps`` and peaks at ``peak``."""
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        length, peaks = scheduler.total_steps, [g["max_lr"] for g in scheduler.optimizer.param_groups]
    elif isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        length, peaks = scheduler.T_max, scheduler.base_lrs
    else:
        return True  # not ours (e.g. LearningRateFinder's own while it searches)
    if not math.isfinite(total_steps):
        return True  # configure_optimizers refused this already
    same_length = length == max(int(total_steps), 1, scheduler.last_epoch)  # as make_scheduler
    return same_length and (peak is None or all(p == peak for p in peaks))
