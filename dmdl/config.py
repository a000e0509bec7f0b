"""Training configuration: one dataclass, YAML presets, command-line overrides.

Presets live in ``dmdl/configs/<name>.yaml`` and hold only the keys that differ
from the dataclass defaults. ``load_config("regdb", ["--stage1-epochs", "5"])``
gives the ``regdb`` preset with one override.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

DATASETS = ("sysu", "regdb", "llcm")


@dataclass
class Config:
    """Every knob of a training run. Defaults are DMDL's published values
    (algorithm.md §A1, §A8, §A10) for RegDB unless a preset says otherwise."""

    # data
    dataset: str = "regdb"
    data_root: str | None = None
    trial: int = 1  # RegDB: split 1..10 the model is trained on; SYSU/LLCM: unused
    height: int = 288
    width: int = 144
    cache_images: bool = False  # keep decoded training images in RAM
    workers: int = 4

    # model (algorithm.md §A2)
    arch: str = "resnet50"
    pretrained: str = "imagenet"  # a .pth file, "imagenet" or "none"
    non_local: bool = True
    channels_last: bool = False

    # schedule (algorithm.md §A1.1, §A10)
    stage1_epochs: int = 30
    stage2_epochs: int = 30
    iters: int = 100
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1

    # sampler (algorithm.md §A4.2): per-modality batch = num_ids * num_instances
    batch_size: int = 128
    num_instances: int = 16

    # memory (algorithm.md §A4.1, §A8)
    temperature: float = 0.05
    momentum: float = 0.2

    # pseudo-labels (algorithm.md §A9)
    k1: int = 30
    k2: int = 6
    eps: float = 0.3
    min_samples: int = 4
    association: str = "imca"
    cross_weight: float = 0.25  # weight of the stage-2 cross-modality memory term
    cross_memory: str = "anchor"  # "anchor": PGM's mapped-vs-anchor memory; "shared": RGB+IR centroids
    channel_exchange: float = 0.5  # probability of the visible channel augmentation (CA)
    random_invert: float = 0.0  # probability of intensity inversion, both modalities (ours, not DMDL)

    # run
    seed: int = 1
    device: str = "auto"
    output_dir: str = "runs/regdb"
    resume: str | None = None
    eval_untrained: bool = True
    max_train_images: int | None = None  # cap per modality, for smoke runs

    def validate(self) -> "Config":
        """Check value ranges; raises ValueError naming the key."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset == "regdb" and not 1 <= self.trial <= 10:
            raise ValueError(f"trial must be in 1..10 for RegDB, got {self.trial}")
        for key in ("height", "width", "iters", "batch_size", "num_instances", "k1", "k2", "min_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("stage1_epochs", "stage2_epochs", "workers"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.batch_size % self.num_instances:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_instances ({self.num_instances})"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.temperature <= 0 or self.eps <= 0:
            raise ValueError("temperature and eps must be > 0")
        if self.cross_memory not in ("anchor", "shared"):
            raise ValueError(f"cross_memory must be 'anchor' or 'shared', got {self.cross_memory!r}")
        if self.association != "imca":
            raise ValueError(f"association {self.association!r} is not implemented; available: 'imca'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in ``dmdl/configs``."""
    files = resources.files("dmdl.configs").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
        origin = str(path)
    else:
        res = resources.files("dmdl.configs") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ValueError(
                f"unknown config {name_or_path!r}: not a YAML file and not a preset "
                f"(presets: {', '.join(preset_names())})"
            )
        text = res.read_text()
        origin = f"preset {name_or_path}"
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected a mapping of keys to values")
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


def make_config(values: dict[str, Any]) -> Config:
    """Build a validated Config from a mapping; unknown keys raise ValueError."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(key, value, fields[key].type)
    return Config(**kwargs).validate()


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--k1", "20", "--eps=0.5"]`` -> ``{"k1": "20", "eps": "0.5"}``."""
    out: dict[str, str] = {}
    i = 0
    args = list(args)
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise ValueError(f"expected --key value, got {tok!r}")
        if "=" in tok:
            key, val = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"missing value for {tok}")
            key, val = tok[2:], args[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out


def load_config(name_or_path: str, overrides: Sequence[str] | dict[str, Any] = ()) -> Config:
    """Preset (or YAML file) + overrides -> validated Config.

    Raises:
        ValueError: unknown preset, unknown key, or a value of the wrong type.
    """
    values = _read_yaml(name_or_path)
    if isinstance(overrides, dict):
        values.update({k.replace("-", "_"): v for k, v in overrides.items()})
    else:
        values.update(parse_overrides(overrides))
    return make_config(values)


__all__ = ["Config", "load_config", "make_config", "parse_overrides", "preset_names"]
