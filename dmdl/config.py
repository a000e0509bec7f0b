"""Training configuration: sections owned by their consumers, YAML presets, flat command-line keys.

A :class:`Config` is made of sections, each a dataclass that validates itself:

- ``run`` (:class:`RunConfig`): seed, device, output, resume, precision, model selection;
- ``data`` (:class:`DataConfig`): dataset, split, input size, batch composition, loading;
- ``model`` (:class:`ModelConfig`): backbone, weights, BatchNorm grouping, memory layout;
- ``schedule`` (:class:`ScheduleConfig`): epochs, iterations, optimiser and LR schedule;
- ``clustering`` (:class:`ClusteringConfig`): clustering features, Jaccard, DBSCAN and its guards;
- ``transfer`` (:class:`TransferConfig`): MULT's label transfer (read by MULT, and by DMDL with
  ``association: mult``);
- ``method``: the section of the chosen method (``dmdl.methods.dmdl.DMDLConfig``,
  ``dmdl.methods.mult.MULTConfig``), which a method module registers with
  :func:`register_method_config` (``import dmdl`` registers DMDL and MULT).

Presets (``dmdl/configs/<name>.yaml``), YAML files, a run's ``config.json`` and command-line
overrides all use flat keys (``k1: 20``, ``--cai false``): every key belongs to exactly one
section, and ``--method`` picks the method section. A key that belongs to no section is an
error naming the closest keys; a key of a section this run does not read (``--cai true`` with
``--method mult``) is an error saying which method reads it, unless its value is the default
(so a ``config.json`` written by another version loads).

``load_config("regdb", ["--stage1-epochs", "5"])`` gives the ``regdb`` preset with one override.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import yaml

from dmdl.data.registry import DATASET_NAMES, get_dataset


class Section:
    """Base of the config sections (dataclasses). ``section`` is the section's name;
    :meth:`check` validates the section, with the whole config for checks across sections."""

    section: ClassVar[str] = ""

    def check(self, cfg: "Config") -> None:
        """Raise ValueError naming the key when a value is out of range."""


def at_least(section: Section, minimum: float, *keys: str) -> None:
    """Raise ValueError naming the first of ``keys`` whose value is below ``minimum``."""
    for key in keys:
        if getattr(section, key) < minimum:
            raise ValueError(f"{key} must be >= {minimum:g}, got {getattr(section, key)}")


def one_of(section: Section, key: str, choices: Sequence[str]) -> None:
    """Raise ValueError naming ``key`` when its value is not one of ``choices``."""
    if getattr(section, key) not in choices:
        raise ValueError(f"{key} must be {' or '.join(repr(c) for c in choices)}, got {getattr(section, key)!r}")


@dataclass
class RunConfig(Section):
    """How a run runs: seeds, device, where it writes, precision, model selection (docs/dmdl.md#A10)."""

    section: ClassVar[str] = "run"
    seed: int = 1
    device: str = "auto"
    output_dir: str = "runs/regdb"
    resume: str | None = None  # a run directory or checkpoint file to continue from
    deterministic: bool = False  # deterministic kernels: a resumed run ends as an uninterrupted one
    eval_untrained: bool = True
    # mixed precision of the model's forward passes (training and feature extraction):
    # "auto": fp16 autocast + GradScaler on CUDA (the released code's), bf16 autocast on a CPU that
    #         multiplies bf16 in hardware (AVX512-BF16, AMX), float32 elsewhere;
    # "cuda": fp16 on CUDA only (v0.4's `amp: true`); "bf16", "fp16": that dtype on any device
    #         (fp16 on CUDA only); "off": float32 (v0.4's `amp: false`)
    amp: str = "auto"
    # with fp16 amp on CUDA: the losses under fp16 autocast with TF32 matmuls too, as the released DMDL;
    # false: losses in fp32 (the model's forward stays under autocast)
    amp_losses: bool = True
    # "reference": every memory read's gradient is taken against the memory as it stands when the
    # released code's backward reaches it, and the reads update their memories last read first (the
    # released DMDL / MULT step); "forward": every loss against the forward-time memories, updates
    # after backward() in the documented order (dmdl.memories)
    memory_semantics: str = "reference"
    # model selection (docs/dmdl.md#A1.2.9): also report the epoch with the best TEST mAP (the reference's leak)
    select_on_test: bool = False
    # several processes (torchrun, `dmdl train --nproc N`): the process group's backend ("auto": NCCL on
    # CUDA, gloo on the CPU) and how long a rank waits in a collective, e.g. for rank 0's clustering, in seconds
    dist_backend: str = "auto"
    dist_timeout: float = 7200.0

    def __post_init__(self) -> None:
        legacy = {"true": "cuda", "false": "off"}  # v0.4 saved amp as a bool
        self.amp = legacy.get(str(self.amp).lower(), self.amp)

    def check(self, cfg: "Config") -> None:
        one_of(self, "memory_semantics", ("reference", "forward"))
        one_of(self, "amp", ("auto", "cuda", "bf16", "fp16", "off"))
        one_of(self, "dist_backend", ("auto", "nccl", "gloo"))
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")


@dataclass
class DataConfig(Section):
    """The dataset, its split, the input size and the batch composition (docs/dmdl.md#A3, #A4.2)."""

    section: ClassVar[str] = "data"
    dataset: str = "regdb"
    data_root: str | None = None
    trial: int = 1  # RegDB: split 1..10 the model is trained on; SYSU/LLCM: unused
    height: int = 288
    width: int = 144
    # resize of the clustering and test images: "bicubic", "bilinear", or "auto": the method's own
    # (DMDL bicubic, MULT bilinear, as their released code)
    resize: str = "auto"
    # per-modality batch = (batch_size / num_instances) pseudo-identities x num_instances images
    batch_size: int = 128
    num_instances: int = 16
    cache_images: bool = False  # keep decoded training images in RAM
    workers: int = 4
    max_train_images: int | None = None  # cap per modality, for smoke runs
    check_images: bool = True  # decode every image before the run starts (names the bad files)

    def check(self, cfg: "Config") -> None:
        one_of(self, "resize", ("auto", "bicubic", "bilinear"))
        info = get_dataset(self.dataset) if self.dataset in DATASET_NAMES else None
        if info is None:
            raise ValueError(f"dataset must be one of {DATASET_NAMES}, got {self.dataset!r}")
        if info.trials and not 1 <= self.trial <= info.trials:
            raise ValueError(f"trial must be in 1..{info.trials} for {info.title}, got {self.trial}")
        at_least(self, 1, "height", "width", "batch_size", "num_instances")
        at_least(self, 0, "workers")
        if self.batch_size % self.num_instances:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_instances "
                             f"({self.num_instances})")
        if self.max_train_images is not None and self.max_train_images < 1:
            raise ValueError(f"max_train_images must be >= 1 (or none), got {self.max_train_images}")


@dataclass
class ModelConfig(Section):
    """The backbone and how it is laid out (docs/dmdl.md#A2, docs/mult.md#B2)."""

    section: ClassVar[str] = "model"
    arch: str = "resnet50"  # resnet18/34/50/101 (AGW) or mobilenet_v2
    pretrained: str = "imagenet"  # a .pth file, "imagenet" or "none"
    non_local: bool = True  # AGW non-local blocks (ResNets only: false for mobilenet_v2)
    last_stride: int = 1
    # one stem per modality in front of the shared layers (MULT/ADCA/PGM's two-stream AGW,
    # docs/mult.md#B2); DMDL itself is one-stream (false)
    two_stream: bool = False
    channels_last: bool = False
    ghost_bn_groups: int = 0  # > 1: BatchNorm statistics per group, as the reference's 4-GPU DataParallel

    def check(self, cfg: "Config") -> None:
        if self.arch == "mobilenet_v2" and self.non_local:
            raise ValueError("non_local: the non-local blocks exist for the ResNet AGW only; "
                             "set --non-local false with --arch mobilenet_v2")
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}")
        batch = cfg.data.batch_size
        if self.ghost_bn_groups < 0 or (self.ghost_bn_groups > 1 and batch % self.ghost_bn_groups):
            raise ValueError(f"ghost_bn_groups must be 0, 1 or divide batch_size ({batch}), "
                             f"got {self.ghost_bn_groups}")


@dataclass
class ScheduleConfig(Section):
    """Epochs, iterations, the optimiser and its LR schedule (docs/dmdl.md#A1.1, #A10, docs/mult.md#B5)."""

    section: ClassVar[str] = "schedule"
    stage1_epochs: int = 30
    stage2_epochs: int = 30
    iters: int = 100
    iters_stage2: int = 0  # iterations per stage-2 epoch; 0 = iters (MULT on SYSU: 300 then 200)
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    lr_milestones: str = ""  # "20,60,80": epochs counted over both stages (stage 1 first) where the LR is
    #                          multiplied by gamma, instead of StepLR(step_size) per stage (MULT's schedule)

    def check(self, cfg: "Config") -> None:
        at_least(self, 1, "iters")
        at_least(self, 0, "stage1_epochs", "stage2_epochs", "iters_stage2")
        parse_milestones(self.lr_milestones)

    def epochs(self, stage: int) -> int:
        """Epochs of ``stage`` (1 or 2)."""
        return self.stage1_epochs if stage == 1 else self.stage2_epochs

    def iters_for(self, stage: int) -> int:
        """Training iterations per epoch of ``stage`` (``iters_stage2`` in stage 2 when set)."""
        return self.iters_stage2 if stage == 2 and self.iters_stage2 else self.iters


@dataclass
class ClusteringConfig(Section):
    """Clustering features, k-reciprocal Jaccard + DBSCAN, and the guards on their result
    (docs/dmdl.md#A1.2, #A5.1, #A9; :mod:`dmdl.guards`)."""

    section: ClassVar[str] = "clustering"
    # "pseudo": DBSCAN clusters and their association (unsupervised); "ground-truth": the true
    # identities in their place, per modality and across modalities (the supervised ceiling)
    labels: str = "pseudo"
    k1: int = 30
    k2: int = 6
    eps: float = 0.3
    min_samples: int = 4
    renormalize: str = "stage2"  # L2-renormalise clustering features: "always", "never", "stage2"
    feature_flip: bool = True  # average each clustering feature with its flipped image (MULT: no flip)
    min_clusters: int = 2  # stop when a modality has fewer clusters (0: never stop)
    max_outlier_share: float = 0.5  # warn when DBSCAN leaves more than this share of a modality as outliers

    def check(self, cfg: "Config") -> None:
        one_of(self, "labels", ("pseudo", "ground-truth"))
        at_least(self, 1, "k1", "k2", "min_samples")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        one_of(self, "renormalize", ("always", "never", "stage2"))
        if self.min_clusters < 0:
            raise ValueError(f"min_clusters must be >= 0, got {self.min_clusters}")
        if not 0.0 <= self.max_outlier_share <= 1.0:
            raise ValueError(f"max_outlier_share must be in [0, 1], got {self.max_outlier_share}")

    def renormalized(self, stage: int) -> bool:
        """Whether clustering features of ``stage`` are L2-renormalised."""
        return self.renormalize == "always" or (self.renormalize == "stage2" and stage == 2)


@dataclass
class TransferConfig(Section):
    """MULT's label transfer (docs/mult.md#B3), read by MULT and by DMDL's ``association: mult``."""

    section: ClassVar[str] = "transfer"
    mult_alpha: float = 0.2  # weight of the initial labels in the label propagation (docs/mult.md#B3.4)
    mult_lambda: float = 25.0  # Sinkhorn kernel exp(-lambda |f - c|^2) (docs/mult.md#B3.2, #B3.3)
    cross_affinity: str = "dense"  # heterogeneous affinity: "dense" Sinkhorn plan (MULT) or "knn" (sparse,
    #                                  unbalanced; experimental: much worse labels on RegDB-half, see README)
    cross_k: int = 30  # neighbours per row of the "knn" heterogeneous affinity

    def check(self, cfg: "Config") -> None:
        if not 0.0 <= self.mult_alpha <= 1.0:
            raise ValueError(f"mult_alpha must be in [0, 1], got {self.mult_alpha}")
        if not self.mult_lambda > 0:
            raise ValueError(f"mult_lambda must be > 0, got {self.mult_lambda}")
        one_of(self, "cross_affinity", ("dense", "knn"))
        at_least(self, 1, "cross_k")


class MethodConfig(Section):
    """Base of a method's own section. Subclasses are dataclasses registered with
    :func:`register_method_config`.

    Attributes:
        name: the method's config name (``--method``).
        method_class: import path ``"module:Class"`` of the method (see :mod:`dmdl.methods.base`).
        resize: the method's resize of clustering and test images (``data.resize: auto``).
    """

    section: ClassVar[str] = "method"
    name: ClassVar[str] = ""
    method_class: ClassVar[str] = ""
    resize: ClassVar[str] = "bicubic"

    def unread(self, section: str) -> str | None:
        """None when this method, with these settings, reads the shared section ``section``; else
        why not (a reason for the error on a key of that section)."""
        return None


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}


def register_method_config(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: make ``cls`` the section of method ``cls.name`` (``--method cls.name``).

    Raises:
        ValueError: ``cls.name`` is empty or already registered by another class.
    """
    if not cls.name or METHOD_CONFIGS.get(cls.name, cls) is not cls:
        raise ValueError(f"method config {cls.__name__}: name {cls.name!r} is empty or taken")
    METHOD_CONFIGS[cls.name] = cls
    return cls


SHARED_SECTIONS: tuple[type[Section], ...] = (RunConfig, DataConfig, ModelConfig, ScheduleConfig,
                                              ClusteringConfig, TransferConfig)


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls)]


@dataclass
class Config:
    """Every setting of a run, by section (see the module docstring). Build it with
    :func:`load_config` or :func:`make_config`; ``to_dict()`` gives the flat keys."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    method: MethodConfig = field(default_factory=lambda: _method_config("dmdl")())

    def resize(self) -> str:
        """The interpolation of clustering and test image resizing: ``data.resize``, or the method's
        own when it is ``auto``."""
        return self.method.resize if self.data.resize == "auto" else self.data.resize

    def sections(self) -> list[Section]:
        """The shared sections, then the method's."""
        return [self.run, self.data, self.model, self.schedule, self.clustering, self.transfer, self.method]

    def validate(self) -> "Config":
        """Check every section; returns self.

        Raises:
            ValueError: a value out of range (the message names the key).
        """
        for section in self.sections():
            section.check(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The flat keys of every section the method reads, plus ``method`` (the method's name)."""
        out: dict[str, Any] = {"method": self.method.name}
        for section in self.sections():
            if not self.method.unread(section.section):
                out.update(dataclasses.asdict(section))
        return out

    def replace(self, **values: Any) -> "Config":
        """A validated copy with some flat keys changed (``cfg.replace(trial=2, output_dir=...)``).

        Raises:
            ValueError: an unknown key, or a key of a section this run does not read.
        """
        return make_config(dict(self.to_dict(), **values))


def _method_config(name: str) -> type[MethodConfig]:
    try:
        return METHOD_CONFIGS[name]
    except KeyError:
        raise ValueError(f"method must be one of {sorted(METHOD_CONFIGS)}, got {name!r}") from None


def key_owners(method: str) -> dict[str, type[Section]]:
    """Flat key -> the section class that owns it, for a run of ``method``."""
    owners: dict[str, type[Section]] = {}
    for cls in SHARED_SECTIONS + (_method_config(method),):
        for f in _fields(cls):
            owners[f.name] = cls
    return owners


def parse_milestones(text: str) -> tuple[int, ...]:
    """``"20,60,80"`` -> ``(20, 60, 80)``: strictly increasing epochs >= 1 (empty text: none).

    Raises:
        ValueError: unreadable text, a value < 1 or not increasing.
    """
    try:
        values = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise ValueError(f"lr_milestones: expected comma-separated epochs such as '20,60,80', got {text!r}") from None
    if any(v < 1 for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"lr_milestones: epochs must be >= 1 and increasing, got {text!r}")
    return values


def parse_schedule(text: str, name: str = "schedule") -> tuple[tuple[int, float], ...]:
    """``"0:0,16:0.25"`` -> ``((0, 0.0), (16, 0.25))``: (first epoch, weight) pairs, for
    :func:`dmdl.losses.triplet_weight`. An empty string is the empty schedule (weight 0).

    Raises:
        ValueError: malformed text, epochs not strictly increasing, or a negative weight.
    """
    pairs = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        try:
            epoch, weight = part.split(":")
            pairs.append((int(epoch), float(weight)))
        except ValueError:
            raise ValueError(f"{name}: cannot read {part!r} as first_epoch:weight (in {text!r})") from None
    if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])) or any(not (math.isfinite(w) and w >= 0) for _, w in pairs):
        raise ValueError(f"{name}: epochs must increase and weights be >= 0, got {text!r}")
    return tuple(pairs)


def parse_trials(text: str | int) -> list[int]:
    """``"all"`` -> 1..10; ``"1,3,5"`` -> [1, 3, 5]; ``"2"`` -> [2] (RegDB trials).

    Raises:
        ValueError: a trial outside 1..10 or unreadable text.
    """
    count = get_dataset("regdb").trials
    text = str(text).strip().lower()
    if text == "all":
        return list(range(1, count + 1))
    try:
        trials = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--trial: expected 'all', a number or a comma list, got {text!r}") from None
    if not trials or any(not 1 <= t <= count for t in trials):
        raise ValueError(f"--trial: RegDB trials are 1..{count}, got {text!r}")
    return trials


def parse_seeds(text: str | int) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]: distinct integer seeds, in the order given.

    Raises:
        ValueError: unreadable text, no seed or a repeated one.
    """
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers such as 1,2,3, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct seeds, got {text!r}")
    return seeds


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in ``dmdl/configs``."""
    files = resources.files("dmdl.configs").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str, _depth: int = 0) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
        origin = str(path)
    else:
        res = resources.files("dmdl.configs") / f"{name_or_path}.yaml"
        if not res.is_file():
            import difflib

            if path.suffix in (".yaml", ".yml"):
                raise ValueError(f"config file not found: {path}")
            close = difflib.get_close_matches(str(name_or_path), preset_names(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown config {name_or_path!r}: not a YAML file and not a preset{hint} "
                f"(presets: {', '.join(preset_names())})"
            )
        text = res.read_text()
        origin = f"preset {name_or_path}"
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected a mapping of keys to values")
    base = data.pop("base", None)
    if base is not None:  # a preset may extend another: its keys override the base's
        if _depth > 8:
            raise ValueError(f"{origin}: 'base' presets nest too deep (a cycle?)")
        merged = _read_yaml(str(base), _depth + 1)
        merged.update(data)
        return merged
    return data


def _coerce(key: str, value: Any, ftype: Any) -> Any:
    """Convert a YAML or command-line value to the type of field ``key``."""
    tname = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and "None" in tname):
        if "None" in tname:
            return None
        if tname.startswith("str"):
            return "none"
        raise ValueError(f"{key} cannot be None")
    try:
        if tname.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tname.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tname.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: cannot read {value!r} as {tname}") from None


def _refusal(key: str, method: str, method_cfg: MethodConfig | None = None) -> str | None:
    """Why a ``method`` run refuses the flat key ``key`` (None: it reads it). ``method_cfg`` (the
    run's method section) decides whether the shared section owning ``key`` is read."""
    owners = key_owners(method)
    if key in owners:
        why = method_cfg.unread(owners[key].section) if method_cfg is not None else None
        if why:
            return f"--{key.replace('_', '-')} ({owners[key].section} section) is not read by method {method} " \
                   f"with these settings ({why})"
        return None
    others = [name for name, cls in sorted(METHOD_CONFIGS.items()) if key in {f.name for f in _fields(cls)}]
    if not others:
        return unknown_key_message(key, method)
    return (f"--{key.replace('_', '-')} is a key of method {' and '.join(others)}; this run's method is {method} "
            f"(--method), which does not read it")


def _default_of(key: str) -> list[Any]:
    """The defaults of ``key`` in every section class that has it (shared sections and methods)."""
    return [f.default for cls in SHARED_SECTIONS + tuple(METHOD_CONFIGS.values()) for f in _fields(cls)
            if f.name == key]


def _build(values: Mapping[str, Any]) -> tuple[Config, str, dict[str, Any]]:
    """Sections from flat keys, before the checks that need the whole config: (config, method,
    the given keys)."""
    values = {k.replace("-", "_"): v for k, v in values.items()}
    method = str(values.pop("method", "dmdl"))
    owners = key_owners(method)
    kwargs: dict[type[Section], dict[str, Any]] = {cls: {} for cls in set(owners.values())}
    for key, value in values.items():
        why = _refusal(key, method)
        if why:
            raise ValueError(why)
        ftype = {f.name: f.type for f in _fields(owners[key])}[key]
        kwargs[owners[key]][key] = _coerce(key, value, ftype)
    return Config(**{cls.section: cls(**kw) for cls, kw in kwargs.items()}), method, values


def make_config(values: Mapping[str, Any]) -> Config:
    """Build a validated Config from flat keys (a preset's, a YAML file's, command-line overrides).

    Raises:
        ValueError: unknown key (with the closest keys), a key of another method, a key of a
            section the method does not read with these settings (``--mult-alpha`` with
            ``--association imca``), a value of the wrong type or out of range.
    """
    cfg, method, given = _build(values)
    for key in given:
        why = _refusal(key, method, cfg.method)
        if why:
            raise ValueError(why)
    return cfg.validate()


def config_from_saved(values: Mapping[str, Any]) -> Config:
    """The Config of a saved flat dict (a checkpoint's ``config``, a run's ``config.json``), also
    one written by an earlier version, which saved every key of every method: keys this run does
    not read are dropped when they hold their default value (anything else is refused as by
    :func:`make_config`).

    Raises:
        ValueError: as :func:`make_config`.
    """
    values = {k.replace("-", "_"): v for k, v in values.items()}
    method = str(values.get("method", "dmdl"))
    probe, _, _ = _build({k: v for k, v in values.items() if k == "method" or not _refusal(k, method)})
    keep = {}
    for key, value in values.items():
        if key != "method" and _refusal(key, method, probe.method):
            defaults = _default_of(key)
            if defaults and any(_coerce(key, value, type(d)) == d for d in defaults if d is not None):
                continue
        keep[key] = value
    return make_config(keep)


def unknown_key_message(key: str, method: str = "dmdl") -> str:
    """``unknown config key --foo`` with the closest keys, as the command line spells them."""
    import difflib

    names = list(key_owners(method)) if method in METHOD_CONFIGS else []
    close = difflib.get_close_matches(key.replace("-", "_"), names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
    return f"unknown config key --{key.replace('_', '-')}{hint} (dmdl train --help lists the keys)"


def config_keys_help(width: int = 100) -> str:
    """Every config key as ``--key=default``, by section, for ``dmdl train --help``."""
    import textwrap

    def fmt(cls: type) -> str:
        items = []
        for f in _fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else default
            items.append(f"--{f.name.replace('_', '-')}={shown}")
        return "\n".join(textwrap.wrap("  ".join(items), width=width, initial_indent="    ",
                                       subsequent_indent="    ", break_on_hyphens=False, break_long_words=False))

    blocks = [f"  {cls.section}:\n{fmt(cls)}" for cls in SHARED_SECTIONS]
    blocks += [f"  method {name} (--method {name}):\n{fmt(cls)}" for name, cls in sorted(METHOD_CONFIGS.items())]
    return "\n".join(blocks)


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--k1", "20", "--eps=0.5"]`` -> ``{"k1": "20", "eps": "0.5"}``."""
    out: dict[str, str] = {}
    i = 0
    args = list(args)
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            raise ValueError(f"expected --key value, got {tok!r}")
        if "=" in tok:
            key, val = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2
                                       and not _is_number(args[i + 1])):
                raise ValueError(f"missing value for {tok} (config keys take one: {tok} VALUE)")
            key, val = tok[2:], args[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out


def load_config(name_or_path: str | Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Preset (or YAML file, or a mapping such as a run's config.json) + overrides -> validated Config.

    Raises:
        ValueError: unknown preset, unknown key, a key this run does not read, or a value of the
            wrong type.
    """
    extra = {k.replace("-", "_"): v for k, v in overrides.items()} if isinstance(overrides, Mapping) \
        else parse_overrides(overrides)
    if isinstance(name_or_path, Mapping):  # a saved config: read as config_from_saved does, then the overrides
        return make_config(dict(config_from_saved(name_or_path).to_dict(), **extra))
    return make_config(dict(_read_yaml(name_or_path), **extra))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = ["Config", "Section", "RunConfig", "DataConfig", "ModelConfig", "ScheduleConfig", "ClusteringConfig",
           "TransferConfig", "MethodConfig", "METHOD_CONFIGS", "register_method_config", "at_least", "one_of",
           "load_config", "make_config", "config_from_saved", "config_keys_help", "unknown_key_message", "parse_overrides",
           "parse_schedule",
           "parse_milestones", "parse_trials", "parse_seeds", "preset_names", "key_owners"]
