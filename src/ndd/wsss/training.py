"""The two training steps: the WSSS network (``ndd wsss train``) and the segmentation network
trained on pseudo labels (``ndd wsss train-seg``).

Both run on ``ndd.train``'s machinery: one process or one ``torchrun`` DDP rank
(:func:`ndd.train.distributed.init_distributed`), a data stream that is a function of the
step alone (:class:`ndd.train.data.ResumableDistributedSampler` +
:class:`ndd.train.data.SeededDataset`), the poly schedule (:func:`ndd.train.optim.build_scheduler`),
atomic checkpoints with RNG states (:mod:`ndd.train.checkpoint`), ``metrics.csv`` and
TensorBoard (:class:`ndd.train.metrics.MetricLogger`). ``resume`` continues exactly: same
data, same draws, same next-step loss (tested on the CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ndd.data import collate
from ndd.train.amp import autocast_dtype, autocast_submodules
from ndd.train.checkpoint import restore_training_state, save_run_checkpoint, seed_everything, training_state
from ndd.train.config import _plain
from ndd.train.data import ResumableDistributedSampler, SeededDataset
from ndd.train.distributed import DistInfo, init_distributed, window_means
from ndd.train.loop import _set_determinism, fit_and_leave
from ndd.train.metrics import MetricLogger, close_all, open_run_dir, progress_bar
from ndd.train.optim import build_scheduler, optimizer_step

from .checkpoints import FORMAT, load_wsss_checkpoint
from .config import RunConfig, SegTrainConfig, WSSSTrainConfig
from .datasets import CropTransform, PseudoLabelDataset, build_dataset
from .functional import grid_valid
from .guidance import Guidance, KernelCache, TensorCache, module_fingerprint
from .network import WSSSNet
from .segnet import build_segmentation_net

__all__ = ["WSSSTrainer", "SegTrainer", "train", "train_seg"]


class _Trainer:
    """What both steps share: process group, data stream, optimiser, checkpoints, logging, loop."""

    KIND = ""
    FIELDS: tuple[str, ...] = ()

    def __init__(self, config: RunConfig) -> None:
        config.validate()  # before the process group, the data or any model
        self.info: DistInfo = init_distributed(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        ckpt = load_wsss_checkpoint(config.resume, self.KIND) if config.resume else None
        self.config = cfg = config
        _set_determinism(cfg.deterministic)
        self.device = self.info.device
        self.run_dir = Path(cfg.run_dir)
        self.history: list[dict[str, Any]] = []
        self.dataset = self._build_dataset()  # a wrong layout or missing file fails here
        self.classes = list(self.dataset.classes)
        self.background = self.dataset.background
        seed_everything(cfg.seed)  # same initial weights on every rank
        self.model = self._build_model(pretrained=ckpt is None).to(self.device)
        if ckpt is not None:
            if _plain(ckpt["model_config"]) != _plain(self.model_config):
                diff = sorted(k for k, v in _plain(self.model_config).items() if ckpt["model_config"].get(k) != v)
                raise ValueError(f"the network differs from the checkpoint {cfg.resume} in {diff}")
            self.model.load_state_dict(ckpt["model"])  # now: the feature cache is keyed by these weights
        self.feature_cache = None
        if cfg.feature_cache:  # type: ignore[attr-defined]
            key = module_fingerprint(self.model.backbone, type(self.model.backbone).__name__)
            self.feature_cache = TensorCache(cfg.feature_cache, key)  # type: ignore[attr-defined]
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        if self.amp_dtype is not None:
            autocast_submodules([self.model.backbone], self.device.type, self.amp_dtype)  # type: ignore[list-item]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer = self._build_optimizer()
        self.scheduler = build_scheduler(self.optimizer, cfg.steps, 0, cfg.poly_power)
        self.step = restore_training_state(ckpt, self.model, self.optimizer, self.scheduler, self.scaler,
                                           seed=cfg.seed, rank=self.info.rank, world_size=self.info.world_size)
        self.logger: MetricLogger | None = None
        if self.info.is_main:
            self.logger = open_run_dir(self.run_dir, cfg, tensorboard=cfg.tensorboard, fields=self.FIELDS,
                                       tags={k: f"train/{k}" for k in self.FIELDS if k != "step"},
                                       resume_step=self.step if ckpt is not None else None)

    # -- to be provided by each step ---------------------------------------- #
    model_config: dict[str, Any]

    def _build_dataset(self) -> Any:
        raise NotImplementedError

    def _build_model(self, pretrained: bool) -> nn.Module:
        raise NotImplementedError

    def _param_groups(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _losses(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _extra_metrics(self) -> dict[str, float]:
        return {}

    # -- shared ----------------------------------------------------------- #
    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        groups = [g for g in self._param_groups() if g["params"]]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": _plain(self.model_config),
            "run_config": self.config.to_dict(),
            "classes": self.classes,
            "background": self.background,
            **training_state(self.optimizer, self.scheduler, self.scaler, self.info.world_size),
        }

    def save(self) -> Path:
        """``checkpoints/step_XXXXXXX.pt`` and ``last.pt`` (rank 0)."""
        name = f"step_{self.step:07d}.pt"
        if not self.info.is_main:
            return self.run_dir / "checkpoints" / name
        return save_run_checkpoint(self.run_dir, name, self.state_dict(), self.config.keep_checkpoints, format=FORMAT)

    def _batches(self, first_step: int) -> Iterator[dict[str, Any]]:
        cfg = self.config
        data = SeededDataset(self.dataset)
        sampler = ResumableDistributedSampler(data, num_replicas=self.info.world_size, rank=self.info.rank,
                                              seed=cfg.seed, stream=1)
        per_epoch = sampler.num_samples // cfg.batch_size
        if per_epoch == 0:
            raise ValueError(f"{len(data)} training images give {sampler.num_samples} per process, "
                             f"fewer than one batch of {cfg.batch_size}")
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.num_workers, collate_fn=collate,
                            pin_memory=self.device.type == "cuda", persistent_workers=cfg.num_workers > 0)
        epoch, offset = divmod(first_step, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            sampler.set_start(offset * cfg.batch_size)
            yield from loader
            epoch, offset = epoch + 1, 0

    def deep_features(self, batch: dict[str, Any], images: Tensor) -> Tensor | None:
        """The frozen backbone's features from the feature cache, or ``None`` (computed in the forward)."""
        if self.feature_cache is None:
            return None
        return self.feature_cache.get(self.model.backbone_features, images, batch["id"], batch["geometry"])  # type: ignore[operator]

    def _module(self) -> nn.Module:
        if not self.info.distributed:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _train_step(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        cfg = self.config
        group = self.optimizer.param_groups[0]  # the schedule scales every group alike
        factor = float(group["lr"]) / float(group["initial_lr"])
        self.optimizer.zero_grad(set_to_none=True)
        losses = self._losses(module, batch)
        grad_norm = optimizer_step(losses["loss"], self.optimizer, self.scheduler, self.scaler, cfg.grad_clip,
                                   self.step, f"images {batch['id']}")
        self.step += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(grad_norm=float(grad_norm), lr=cfg.lr * factor, lr_head=cfg.lr * cfg.head_lr_mult * factor)
        return out

    def fit(self) -> Path:
        """Train up to ``config.steps``; returns the path of ``last.pt``."""
        cfg = self.config
        last = self.run_dir / "last.pt"
        if self.step >= cfg.steps:
            return last
        bar = progress_bar(self.info.is_main and cfg.progress, cfg.steps, self.step, desc=f"wsss {self.KIND}")
        module = self._module()
        module.train()
        start = window_start = time.perf_counter()
        window: list[dict[str, float]] = []
        running = None
        try:
            for batch in self._batches(self.step):
                metrics = self._train_step(module, batch)
                window.append(metrics)
                running = metrics["loss"] if running is None else 0.9 * running + 0.1 * metrics["loss"]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{running:.4f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    self._log(window, len(window) / (now - window_start), now - start)
                    window, window_start = [], now
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save()
                if self.step >= cfg.steps:
                    break
            self.save()
        finally:
            close_all(bar, self.logger)
        return last

    def _log(self, window: list[dict[str, float]], steps_per_s: float, elapsed: float) -> None:
        row: dict[str, Any] = window_means(window, self.info)
        row.update(self._extra_metrics(), steps_per_s=steps_per_s, elapsed_s=elapsed)
        if self.logger is not None:
            self.logger.log(self.step, row)
            self.history.append({"step": self.step, **row})


class WSSSTrainer(_Trainer):
    """``ndd wsss train``: :class:`WSSSNet` trained with Eq. 12 from image-level labels."""

    KIND = "wsss"
    FIELDS = ("step", "loss", "loss_cls", "loss_mil", "lr", "lr_head", "mu", "grad_norm", "steps_per_s", "elapsed_s")
    config: WSSSTrainConfig

    def _build_dataset(self) -> Any:
        cfg = self.config
        return build_dataset(cfg.dataset, cfg.data_root, cfg.split, image_labels=cfg.image_labels,
                             transform=CropTransform(cfg.crop_size, tuple(cfg.scale_range), cfg.flip))

    def _build_model(self, pretrained: bool) -> nn.Module:
        cfg = self.config
        net_cfg = cfg.model_config(len(self.classes), self.background)
        self.model_config = net_cfg.to_dict()
        # the guidance model is frozen and not part of the checkpoint: it is named in the config
        self.guidance = Guidance.from_config(net_cfg, self.device)
        self.cache = None
        if self.guidance is not None and cfg.guidance_cache:
            self.cache = KernelCache(cfg.guidance_cache, self.guidance.fingerprint(net_cfg.spec_diff_net))
        return WSSSNet(net_cfg, backbone_weights=cfg.weights if pretrained else None)

    def _param_groups(self) -> list[dict[str, Any]]:
        cfg, m = self.config, self.model
        return [
            {"params": m.backbone_parameters(), "lr": cfg.lr, "name": "backbone"},
            {"params": m.scalar_parameters(), "lr": cfg.lr * cfg.head_lr_mult, "weight_decay": 0.0, "name": "scalars"},
            {"params": m.head_parameters(), "lr": cfg.lr * cfg.head_lr_mult, "name": "head"},
        ]

    def kernel(self, batch: dict[str, Any], images: Tensor, grid: tuple[int, int]) -> Tensor | None:
        """``K`` of a batch from the frozen spec-diff-net (or its cache)."""
        if self.guidance is None:
            return None
        if self.cache is not None:
            return self.cache.get_kernel(self.guidance, images, grid, batch["id"], batch["geometry"])
        return self.guidance(images, grid)

    def _losses(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        targets = batch["classes"].to(self.device, non_blocking=True)
        grid = (math.ceil(images.shape[-2] / 8), math.ceil(images.shape[-1] / 8))
        valid = grid_valid(batch["valid"], grid).to(self.device)
        valid = None if bool(valid.all()) else valid
        K = self.kernel(batch, images, grid)
        out = module(images, K, valid, deep=self.deep_features(batch, images))
        return self.model.loss(out, targets)  # type: ignore[operator]

    def _extra_metrics(self) -> dict[str, float]:
        mu = self.model.mu  # type: ignore[union-attr]
        return {} if mu is None else {"mu": mu}


class SegTrainer(_Trainer):
    """``ndd wsss train-seg``: DeepLab on pseudo labels, cross-entropy with 255 ignored."""

    KIND = "seg"
    FIELDS = ("step", "loss", "pixel_acc", "lr", "lr_head", "grad_norm", "steps_per_s", "elapsed_s")
    config: SegTrainConfig

    def _build_dataset(self) -> Any:
        cfg = self.config
        if cfg.batch_size < 2:
            raise ValueError("train-seg needs batch_size >= 2 per process (the ASPP head normalises over the batch)")
        base = build_dataset(cfg.dataset, cfg.data_root, cfg.split, image_labels=cfg.image_labels)
        return PseudoLabelDataset(base, cfg.pseudo_labels,  # type: ignore[arg-type]
                                  transform=CropTransform(cfg.crop_size, tuple(cfg.scale_range), cfg.flip))

    def _build_model(self, pretrained: bool) -> nn.Module:
        cfg = self.config
        n = cfg.num_classes or len(self.classes)
        self.model_config = {"arch": cfg.arch, "num_classes": n, "freeze_bn": cfg.freeze_bn,
                             "freeze_backbone": cfg.freeze_backbone}
        return build_segmentation_net(cfg.arch, n, cfg.weights if pretrained else None, cfg.freeze_bn,
                                      cfg.freeze_backbone)

    def _param_groups(self) -> list[dict[str, Any]]:
        cfg, m = self.config, self.model
        return [
            {"params": m.backbone_parameters(), "lr": cfg.lr, "name": "backbone"},  # type: ignore[operator]
            {"params": m.head_parameters(), "lr": cfg.lr * cfg.head_lr_mult, "name": "head"},  # type: ignore[operator]
        ]

    def _losses(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        logits = module(images, deep=self.deep_features(batch, images))
        known = labels >= 0
        # a mean over labelled pixels; a crop with none gives 0, not NaN
        loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / known.sum().clamp_min(1)
        acc = ((logits.argmax(1) == labels) & known).sum() / known.sum().clamp_min(1)
        return {"loss": loss, "pixel_acc": acc.detach()}


def _config(cls: type, config: RunConfig | None, overrides: dict[str, Any]) -> Any:
    if config is None:
        return cls.from_dict(overrides) if overrides else cls()
    return config.merged(overrides) if overrides else config


def train(config: WSSSTrainConfig | None = None, **overrides: Any) -> Path:
    """``ndd wsss train``: train the WSSS network; returns the path of ``last.pt``.

    ``config`` (:class:`WSSSTrainConfig`) and/or its fields as keywords, e.g.
    ``train(dataset="folder", data_root="data/shapes", split="train", variant="gap", steps=500)``.
    Under ``torchrun`` each process is one DDP rank.
    """
    return fit_and_leave(WSSSTrainer(_config(WSSSTrainConfig, config, overrides)))


def train_seg(config: SegTrainConfig | None = None, **overrides: Any) -> Path:
    """``ndd wsss train-seg``: train the segmentation network on pseudo labels; returns ``last.pt``."""
    return fit_and_leave(SegTrainer(_config(SegTrainConfig, config, overrides)))
