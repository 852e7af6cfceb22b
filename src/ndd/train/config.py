"""Training configuration: a dataclass, its YAML form and the override rules.

Precedence when the CLI builds a config (lowest first): the dataclass defaults,
the configuration stored in the checkpoint being resumed, ``--config FILE``,
then the flags given on the command line. The resolved configuration is
written to ``<run_dir>/config.yaml`` and into every checkpoint.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ndd.device import check_device_name
from ndd.models.config import AUTHORS_PRESET, SpecDiffNetConfig

__all__ = [
    "TrainConfig", "load_yaml", "save_yaml", "field_types", "coerce_value", "merge_overrides", "apply_sources",
    "EdgeFusionTraining",
]


def _opt(help: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text the CLI shows."""
    return field(metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    """Everything that defines a training run of spec-diff-net (paper §5).

    Defaults follow the paper where it is specific (BSDS500 train+val, 321x321
    crops with 0.8-1.2 scale jitter, LR kernel matching loss, then LR + HR
    segment matching loss, 160k steps in all) and the authors' code where the
    paper is silent (batch 3, 120k stage-1 steps, Adam, poly schedule with power
    0.9 restarted at each stage, diffusion parameters at 10x the base learning
    rate, HR weight 1). See ``docs`` of :func:`ndd.train.train`.
    """

    # -- run ------------------------------------------------------------------
    run_dir: str = _opt("output folder: config.yaml, metrics.csv, tb/, checkpoints/, last.pt", default="runs/ndd")
    seed: int = _opt("seed of model init, data order, augmentation and HR point sampling", default=0)
    device: str = _opt("'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'", default="auto")
    deterministic: bool = _opt("use deterministic algorithms (slower on CUDA)", default=False)
    num_threads: int | None = _opt("torch CPU threads per process (None: torch's default)", default=None)
    resume: str | None = _opt("checkpoint to continue from (exact resume)", default=None)
    # -- data -----------------------------------------------------------------
    dataset: str = _opt("'bsds', 'folder' or 'synthetic' (dead leaves)", default="bsds")
    data_root: str | None = _opt("BSDS500 root (bsds) or folder holding images/ and labels/ (folder)", default=None)
    split: str = _opt("BSDS500 split to train on: train, val, test or trainval (paper)", default="trainval")
    images_dir: str | None = _opt("folder dataset: images (default <data_root>/images)", default=None)
    labels_dir: str | None = _opt("folder dataset: PNG label maps (default <data_root>/labels)", default=None)
    ignore_value: int | None = _opt("folder dataset: raw label value meaning 'no ground truth'", default=None)
    label_suffix: str = _opt("folder dataset: text between the image stem and '.png' in label names", default="")
    synthetic_images: int = _opt("synthetic dataset: number of dead-leaves images", default=2000)
    synthetic_size: tuple[int, int] = _opt("synthetic dataset: image size (H, W)", default=(128, 128))
    crop_size: int = _opt("square training crop (paper 321)", default=321)
    scale_range: tuple[float, float] = _opt("scale jitter range", default=(0.8, 1.2))
    scale_choices: list[float] | None = _opt("discrete scales instead (authors: 0.8 0.9 1.0 1.1 1.2)", default=None)
    flip: bool = _opt("random horizontal flips", default=True)
    batch_size: int = _opt("images per step and per process (authors: 3)", default=3)
    num_workers: int = _opt("DataLoader worker processes per training process", default=2)
    # -- model ----------------------------------------------------------------
    model: dict[str, Any] = _opt(
        "SpecDiffNetConfig keys; unset keys take its defaults, except freeze_bn, which defaults to "
        "True exactly when --weights is given",
        default_factory=dict,
    )
    weights: str | None = _opt(
        "backbone weights: torchvision name (ResNets), 'imagenet' (EfficientNet-Lite) or a local file; "
        "None: random init",
        default=None,
    )
    init_from: str | None = _opt(
        "start from a trained model instead of random or --weights init (fine-tuning): a shipped model name "
        "(default, bsds500, ...) or a weights / checkpoint file; its model config is the base that model keys change",
        default=None,
    )
    legacy: bool = _opt("the authors' released procedure: model legacy=True and their L1 HR loss", default=False)
    # -- optimisation ---------------------------------------------------------
    stage1_steps: int = _opt("steps with the LR kernel matching loss only (authors: 120k)", default=120_000)
    stage2_steps: int = _opt("steps with LR + hr_weight x HR segment matching loss (paper: 160k in all)", default=40_000)
    lr: float = _opt("Adam learning rate of backbone and projection", default=1e-4)
    diffusion_lr_mult: float = _opt("learning rate of mu, t, tau and FAI gammas = this x lr (authors: 10)", default=10.0)
    weight_decay: float = _opt("Adam weight decay (authors: 0)", default=0.0)
    poly_power: float = _opt("poly schedule power, restarted at each stage (authors: 0.9)", default=0.9)
    grad_clip: float | None = _opt("clip the global gradient norm to this (None: off)", default=10.0)
    amp: str = _opt("mixed precision of the backbone on CUDA: auto (bf16 if supported), bf16, fp16, off", default="auto")
    hr_weight: float = _opt("weight of the HR segment matching loss in stage 2", default=1.0)
    hr_scale: float = _opt("resolution of the HR loss relative to the crop (paper 1; authors 0.5)", default=1.0)
    stage2_crop_size: int | None = _opt("stage-2 crop (None: crop_size)", default=None)
    stage2_batch_size: int | None = _opt("stage-2 batch per process (None: batch_size)", default=None)
    stage2_full_image: bool = _opt("stage 2 on whole images, flips only (authors; needs batch 1)", default=False)
    find_unused_parameters: bool = _opt("DDP find_unused_parameters (only for custom models that need it)", default=False)
    # -- logging, checkpoints, validation -------------------------------------
    log_every: int = _opt("steps between CSV / TensorBoard rows", default=10)
    save_every: int = _opt("steps between checkpoints (0: only at the end)", default=5000)
    keep_checkpoints: int = _opt("numbered checkpoints kept (0: all)", default=0)
    progress: bool = _opt("show a progress bar (rank 0)", default=True)
    tensorboard: bool = _opt("write TensorBoard events to <run_dir>/tb", default=True)
    eval_every: int = _opt("steps between kernel-accuracy evaluations on val_split (0: off)", default=0)
    val_split: str | None = _opt("BSDS500 split for kernel accuracy during training (e.g. val)", default=None)
    eval_max_images: int | None = _opt("evaluate at most this many images", default=None)

    # ----------------------------------------------------------------------- #
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of YAML- and ``torch.load(weights_only=True)``-safe values."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) dict, checking names and coercing types."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        types_ = field_types()
        return cls(**{k: coerce_value(k, v, types_[k]) for k, v in data.items()})

    @classmethod
    def from_sources(
        cls,
        *,
        resume: str | Path | None = None,
        config_file: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
        model: dict[str, Any] | None = None,
    ) -> TrainConfig:
        """A configuration from its sources, later ones winning (what ``ndd train`` does).

        Precedence, lowest first: the dataclass defaults, the training configuration
        stored in the checkpoint ``resume`` (which also becomes :attr:`resume`), the
        YAML file ``config_file``, ``overrides`` (field -> value), then ``model``
        (:class:`~ndd.models.SpecDiffNetConfig` keys, merged key by key).

        Example:
            >>> TrainConfig.from_sources(overrides={"lr": 1e-3}, model={"backbone": "small_cnn"}).model["backbone"]
            'small_cnn'
        """
        config = cls()
        if resume is not None:
            from .checkpoint import load_checkpoint  # torch, only when resuming

            config = cls.from_dict(load_checkpoint(resume)["train_config"]).merged({"resume": str(resume)})
        return apply_sources(config, config_file, overrides, model)

    def merged(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied; ``model`` dicts are merged key by key."""
        return TrainConfig.from_dict(merge_overrides(self.to_dict(), overrides))

    def model_config(self) -> SpecDiffNetConfig:
        """The :class:`SpecDiffNetConfig` this run trains (``model`` keys over the defaults, or over
        the config of the :attr:`init_from` model)."""
        overrides = dict(self.model)
        base: dict[str, Any] = {}
        if self.init_from is not None:
            from ndd.models.weights import weights_config  # reads the file (torch), only when fine-tuning

            base = weights_config(self.init_from)
        else:
            # Batch norm trained from scratch must learn; pretrained statistics stay frozen.
            overrides.setdefault("freeze_bn", self.weights is not None)
        # --legacy is the authors' preset; model keys given by the user still win over it
        preset = AUTHORS_PRESET if self.legacy else {}
        return SpecDiffNetConfig.from_dict({**base, **preset, **overrides})

    def resolved(self, check_data: bool = True) -> TrainConfig:
        """Validate and make the model configuration explicit (what is saved with the run).

        ``check_data=False`` accepts a configuration without its data folder (to print it).
        """
        self.validate(check_data)
        return self.merged({"model": self.model_config().to_dict()})

    def validate(self, check_data: bool = True) -> None:
        """Raise ``ValueError`` on inconsistent settings (before any work starts)."""
        if self.dataset not in ("bsds", "folder", "synthetic"):
            raise ValueError(f"dataset must be 'bsds', 'folder' or 'synthetic', got {self.dataset!r}")
        if check_data and self.dataset in ("bsds", "folder") and self.data_root is None and (
            self.dataset == "bsds" or self.images_dir is None or self.labels_dir is None
        ):
            raise ValueError(f"dataset {self.dataset!r} needs data_root (--data)")
        if self.stage1_steps < 0 or self.stage2_steps < 0 or self.stage1_steps + self.stage2_steps == 0:
            raise ValueError("stage1_steps and stage2_steps must be >= 0 and not both 0")
        for name in ("batch_size", "crop_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stage2_full_image and (self.stage2_batch_size or self.batch_size) != 1 and self.stage2_steps:
            raise ValueError("stage2_full_image needs stage2_batch_size 1 (images differ in size)")
        if not 0 < self.hr_scale <= 1:
            raise ValueError(f"hr_scale must be in (0, 1], got {self.hr_scale}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        check_device_name(self.device)  # the spelling, torch-free: --print-config answers a typo too
        if self.eval_every and self.val_split is None:
            raise ValueError("eval_every needs val_split")
        if self.init_from is not None and self.weights is not None:
            raise ValueError("give init_from (a whole trained model) or weights (backbone only), not both")
        if self.eval_every and self.dataset != "bsds":
            raise ValueError("eval_every evaluates a BSDS500 split: needs dataset 'bsds'")
        self.model_config()  # unknown model keys fail here


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (YAML and weights_only friendly)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def field_types() -> dict[str, Any]:
    """Resolved type hints of :class:`TrainConfig` fields."""
    return typing.get_type_hints(TrainConfig)


def coerce_value(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a flag) to the field type ``tp``; ``ValueError`` if impossible."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(name, value, inner[0])
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if origin is tuple:
            items = list(value)
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} values")
            return tuple(coerce_value(name, v, a) for v, a in zip(items, args, strict=True))
        if origin is list:
            return [coerce_value(name, v, args[0]) for v in value]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return _plain(dict(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad value for {name}: {value!r} ({exc})") from exc
    return value


class _ConfigLike(typing.Protocol):
    """What the functions below need of a configuration dataclass (``TrainConfig``, ``ndd.wsss``'s)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...

    def merged(self, overrides: dict[str, Any]) -> Any: ...


_C = typing.TypeVar("_C", bound=_ConfigLike)


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config's ``to_dict``) with ``overrides`` applied in place; ``model`` dicts merge key by key."""
    for key, value in overrides.items():
        if key == "model" and value is not None:
            data["model"] = {**data.get("model", {}), **dict(value)}
        else:
            data[key] = value
    return data


def apply_sources(
    config: _C,
    config_file: str | Path | None,
    overrides: dict[str, Any] | None,
    model: dict[str, Any] | None,
    *,
    what: str = "training config",
) -> _C:
    """The sources of ``from_sources`` above the checkpoint's: YAML ``config_file`` < ``overrides``
    (field -> value) < ``model`` keys, applied to ``config``. ``what``: as in :func:`load_yaml`."""
    if config_file is not None:
        config = config.merged(load_yaml(config_file, type(config), what=what))
    merged = dict(overrides or {})
    if model:
        merged["model"] = dict(model)
    return config.merged(merged)


def _one_line(exc: Exception) -> str:
    """A YAML or OS error in one line (PyYAML's messages quote the source over several)."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and mark is not None:
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def load_yaml(
    path: str | Path, cls: type[_ConfigLike] = TrainConfig, *, what: str = "training config"
) -> dict[str, Any]:
    """Read a (partial) configuration of ``cls`` from YAML as a dict of known keys.

    ``what`` names the kind of file in the error messages (e.g. ``"config"`` for :mod:`ndd.wsss`).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {what} {path}: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} must be a YAML mapping, got {type(data).__name__}")
    cls.from_dict(data)  # checks names and types now, with the file name in the traceback
    return data


def save_yaml(config: _ConfigLike, path: str | Path) -> None:
    """Write ``config`` as YAML (keys in field order)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


@dataclass(frozen=True)
class EdgeFusionTraining:
    """Settings of :func:`ndd.train.edge_fusion.train_edge_fusion` (the shipped head's, chosen on BSDS500 val).

    Attributes:
        steps: Adam steps (cosine decay of the learning rate to 0).
        width: hidden channels of the head.
        crop: side of the square random crops (smaller images: the whole image).
        batch: crops per step.
        lr: initial learning rate.
        eta: share of annotators that makes a pixel an edge (:func:`ndd.losses.balanced_edge_loss`).
        seed: seeds the crops, flips and the head's random initialisation.
    """

    steps: int = 1500
    width: int = 16
    crop: int = 192
    batch: int = 8
    lr: float = 1e-3
    eta: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.width, self.crop, self.batch) < 1 or not self.lr > 0 or not 0 < self.eta <= 1:
            raise ValueError(f"invalid edge fusion training settings: {self}")
