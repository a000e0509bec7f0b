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

    method: str = "dmdl"  # the training method (dmdl.methods)

    # data
    dataset: str = "regdb"
    data_root: str | None = None
    trial: int = 1  # RegDB: split 1..10 the model is trained on; SYSU/LLCM: unused
    height: int = 288
    width: int = 144
    cache_images: bool = False  # keep decoded training images in RAM
    workers: int = 4

    # model (algorithm.md §A2)
    arch: str = "resnet50"  # resnet18/34/50/101 (AGW) or mobilenet_v2
    pretrained: str = "imagenet"  # a .pth file, "imagenet" or "none"
    non_local: bool = True  # AGW non-local blocks (ResNets only: false for mobilenet_v2)
    last_stride: int = 1
    # one stem per modality in front of the shared layers (MULT/ADCA/PGM's two-stream AGW,
    # algorithm.md §B2); DMDL itself is one-stream (false)
    two_stream: bool = False
    channels_last: bool = False

    # schedule (algorithm.md §A1.1, §A10)
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

    # sampler (algorithm.md §A4.2): per-modality batch = num_ids * num_instances, each image in
    # two views (§A3), so one step sees 4 * batch_size images
    batch_size: int = 128
    num_instances: int = 16

    # augmentation (algorithm.md §A3): timm pixel-mode RandomErasing max area per stage
    erasing_max_area: float = 0.5
    erasing_max_area_stage2: float = 0.5  # RegDB stage 2: 0.6

    # memory (algorithm.md §A4.1, §A8)
    temperature: float = 0.05
    momentum: float = 0.2

    # losses (algorithm.md §A4.4, §A5.5, §A8): lambda_tri(e) as "first_epoch:weight,..."
    triplet_margin: float = 0.3
    stage1_triplet: str = "0:0,16:0.25,26:0.5,36:1"
    stage2_triplet: str = "0:0,11:0.5,21:1"

    # pseudo-labels (algorithm.md §A5.1, §A5.2, §A9)
    k1: int = 30
    k2: int = 6
    k1_mapped: int = 0  # stage 2: k1 of the mapped modality (SYSU/LLCM 15); 0 = k1 for both (RegDB)
    eps: float = 0.3
    min_samples: int = 4
    renormalize: str = "stage2"  # L2-renormalise flip-averaged features: "always", "never", "stage2"
    feature_flip: bool = True  # average each clustering feature with its flipped image (MULT: no flip)
    association: str = "imca"  # DMDL stage 2: "imca", "hungarian", "ot" or "mult" (MULT's label transfer)
    matching: str = "cluster"  # "cluster": iMCA every epoch; "regdb-cycle": sample-level on epoch % 5 >= 2
    cross_weight: float = 0.0  # weight of a non-DMDL stage-2 cross-memory term (0 = off; PGM: 0.25)
    cross_memory: str = "anchor"  # "anchor": PGM's mapped-vs-anchor memory; "shared": RGB+IR centroids

    # DMDL modules (algorithm.md §A3, §A6, §A7): each switchable for the ablations (Table 3)
    cai: bool = True  # CAI backdoor-adjusted loss in stage 2 (§A6)
    lambda_cai: float = 0.5
    cbt_data: bool = True  # infrared second view = pseudo-colour (else a second ChannelAdapGray view)
    cbt_label: bool = True  # GMM certainty + swapped top-k refined targets + adaptive shared memory
    cbt_feature: bool = True  # MMD between the two views of each modality (§A7.3)
    lambda_fa: float = 1.0
    refine_from_stage1: int = 30  # first stage-1 epoch with certainty/refinement (RegDB: never)
    refine_from_stage2: int = 5  # first stage-2 epoch using the refined targets
    topk_stage1: int = 3
    topk_stage2: int = 10
    certainty_per_cluster: bool = True  # stage 2: per-cluster GMMs (SYSU/LLCM) or one global (RegDB)
    certainty_loss: str = "prob"  # GMM input: "prob" (the code's -p) or "log" (the paper's Eq. 10, -log p)
    swap_predictions: bool = True  # False: each view's own prediction ("w/o exchange", Fig. 5)
    adaptive_momentum: bool = True  # shared memory eta_x = 0.2/max(q, 0.2); False: fixed `momentum`
    inter_modality_from: int = 25  # first stage-2 epoch with paired-identity batches (-1: never)

    # MULT (algorithm.md Part B; method: mult, and DMDL's association "mult")
    mult_alpha: float = 0.2  # weight of the initial labels in the label propagation (§B3 step 4)
    mult_beta: float = 0.7  # soft labels: beta onehot(argmax y) + (1 - beta) y (§B3 step 6)
    mult_lambda: float = 25.0  # Sinkhorn kernel exp(-lambda |f - c|^2) (§B3 step 2-3)
    cross_affinity: str = "dense"  # heterogeneous affinity: "dense" Sinkhorn plan (MULT) or "knn" (sparse,
    #                                  unbalanced; experimental: much worse labels on RegDB-half, see README)
    cross_k: int = 30  # neighbours per row of the "knn" heterogeneous affinity
    oclr_sharpen: float = 0.2  # OCLR target temperature (§B4)
    lambda_oclr: float = 1.0  # weight of L_oclr (1 in MULT)

    # hardware (algorithm.md §A2, §A10)
    amp: bool = True  # fp16 autocast + GradScaler on CUDA (the reference's default); ignored on the CPU
    ghost_bn_groups: int = 0  # > 1: BatchNorm statistics per group, as the reference's 4-GPU DataParallel

    # model selection (algorithm.md §A1.2 step 9)
    select_on_test: bool = False  # also report the epoch with the best TEST mAP (the reference's leak)

    # run
    seed: int = 1
    device: str = "auto"
    output_dir: str = "runs/regdb"
    resume: str | None = None  # a run directory or checkpoint file to continue from
    deterministic: bool = False  # deterministic kernels: a resumed run ends as an uninterrupted one
    eval_untrained: bool = True
    max_train_images: int | None = None  # cap per modality, for smoke runs
    check_images: bool = True  # decode every image before the run starts (names the bad files)

    # guards (dmdl.guards): DBSCAN results that leave little to train on
    min_clusters: int = 2  # stop when a modality has fewer clusters (0: never stop)
    max_outlier_share: float = 0.5  # warn when DBSCAN leaves more than this share of a modality as outliers

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
        from dmdl.methods import METHODS

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.arch == "mobilenet_v2" and self.non_local:
            raise ValueError("non_local: the non-local blocks exist for the ResNet AGW only; "
                             "set --non-local false with --arch mobilenet_v2")
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}")
        if self.renormalize not in ("always", "never", "stage2"):
            raise ValueError(f"renormalize must be 'always', 'never' or 'stage2', got {self.renormalize!r}")
        if self.matching not in ("cluster", "regdb-cycle"):
            raise ValueError(f"matching must be 'cluster' or 'regdb-cycle', got {self.matching!r}")
        if self.association not in ("imca", "hungarian", "ot", "mult"):
            raise ValueError(f"association must be 'imca', 'hungarian', 'ot' or 'mult', got {self.association!r}")
        if self.cross_affinity not in ("dense", "knn"):
            raise ValueError(f"cross_affinity must be 'dense' or 'knn', got {self.cross_affinity!r}")
        for key in ("mult_alpha", "mult_beta"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("mult_lambda", "oclr_sharpen"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.cross_k < 1 or self.iters_stage2 < 0 or self.lambda_oclr < 0:
            raise ValueError(f"need cross_k >= 1, iters_stage2 >= 0, lambda_oclr >= 0; got {self.cross_k}, "
                             f"{self.iters_stage2}, {self.lambda_oclr}")
        parse_milestones(self.lr_milestones)
        if self.certainty_loss not in ("prob", "log"):
            raise ValueError(f"certainty_loss must be 'prob' or 'log', got {self.certainty_loss!r}")
        for key in ("topk_stage1", "topk_stage2"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lambda_cai", "lambda_fa", "cross_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.ghost_bn_groups < 0 or (self.ghost_bn_groups > 1 and self.batch_size % self.ghost_bn_groups):
            raise ValueError(f"ghost_bn_groups must be 0, 1 or divide batch_size ({self.batch_size}), "
                             f"got {self.ghost_bn_groups}")
        if self.k1_mapped < 0:
            raise ValueError(f"k1_mapped must be >= 0, got {self.k1_mapped}")
        for key in ("erasing_max_area", "erasing_max_area_stage2"):
            if not 0.02 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0.02, 1], got {getattr(self, key)}")
        for key in ("stage1_triplet", "stage2_triplet"):
            parse_schedule(getattr(self, key), key)
        if self.min_clusters < 0:
            raise ValueError(f"min_clusters must be >= 0, got {self.min_clusters}")
        if not 0.0 <= self.max_outlier_share <= 1.0:
            raise ValueError(f"max_outlier_share must be in [0, 1], got {self.max_outlier_share}")
        if self.max_train_images is not None and self.max_train_images < 1:
            raise ValueError(f"max_train_images must be >= 1 (or none), got {self.max_train_images}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def iters_for(self, stage: int) -> int:
        """Training iterations per epoch of ``stage`` (``iters_stage2`` in stage 2 when set)."""
        return self.iters_stage2 if stage == 2 and self.iters_stage2 else self.iters


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
    import math

    if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])) or any(not (math.isfinite(w) and w >= 0) for _, w in pairs):
        raise ValueError(f"{name}: epochs must increase and weights be >= 0, got {text!r}")
    return tuple(pairs)


def parse_trials(text: str | int) -> list[int]:
    """``"all"`` -> 1..10; ``"1,3,5"`` -> [1, 3, 5]; ``"2"`` -> [2] (RegDB trials).

    Raises:
        ValueError: a trial outside 1..10 or unreadable text.
    """
    text = str(text).strip().lower()
    if text == "all":
        return list(range(1, 11))
    try:
        trials = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--trial: expected 'all', a number or a comma list, got {text!r}") from None
    if not trials or any(not 1 <= t <= 10 for t in trials):
        raise ValueError(f"--trial: RegDB trials are 1..10, got {text!r}")
    return trials


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


def make_config(values: dict[str, Any]) -> Config:
    """Build a validated Config from a mapping; unknown keys raise ValueError."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in fields:
            raise ValueError(unknown_key_message(key))
        kwargs[key] = _coerce(key, value, fields[key].type)
    return Config(**kwargs).validate()


def unknown_key_message(key: str) -> str:
    """``unknown config key --foo`` with the closest keys, as the command line spells them."""
    import difflib

    names = [f.name for f in dataclasses.fields(Config)]
    close = difflib.get_close_matches(key.replace("-", "_"), names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
    return f"unknown config key --{key.replace('_', '-')}{hint} (dmdl train --help lists the keys)"


def config_keys_help(width: int = 100) -> str:
    """Every config key as ``--key=default``, for ``dmdl train --help``."""
    import textwrap

    items = []
    for f in dataclasses.fields(Config):
        default = "none" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) \
            else f.default
        items.append(f"--{f.name.replace('_', '-')}={default}")
    return "\n".join(textwrap.wrap("  ".join(items), width=width, initial_indent="  ", subsequent_indent="  ",
                                   break_on_hyphens=False, break_long_words=False))


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


def load_config(name_or_path: str | dict[str, Any], overrides: Sequence[str] | dict[str, Any] = ()) -> Config:
    """Preset (or YAML file, or a mapping such as a run's config.json) + overrides -> validated Config.

    Raises:
        ValueError: unknown preset, unknown key, or a value of the wrong type.
    """
    values = dict(name_or_path) if isinstance(name_or_path, dict) else _read_yaml(name_or_path)
    if isinstance(overrides, dict):
        values.update({k.replace("-", "_"): v for k, v in overrides.items()})
    else:
        values.update(parse_overrides(overrides))
    return make_config(values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = ["Config", "load_config", "config_keys_help", "unknown_key_message", "make_config", "parse_overrides", "parse_schedule", "parse_milestones", "parse_trials", "preset_names"]
