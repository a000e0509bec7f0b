"""Benchmark: one training step of each method against the bare backbone, and where an epoch's time
goes, on the CPU (issue 19).

The model and the batch are the CPU presets': ``regdb-cpu`` (DMDL: MobileNetV2, 128 x 64, last stride
1, 4 pseudo-ids x 8 images per modality in two views: 128 images a step) and ``regdb-cpu-mult`` (MULT:
the two-stream MobileNetV2, visible in two views and infrared in one: 96 images a step), on the real
RegDB-mini (trial 1, 480 + 480 training images; skipped when it is absent). Every image is decoded
once before anything is timed (the presets' image cache, as on every epoch of a run after its first).

``test_epoch_split`` — one short epoch (``DMDL_BENCH_ITERS`` iterations) per case: DMDL stage 1
(epoch 2: triplet on), DMDL stage 2 (epoch 2: refined targets, certainties, iMCA with the infrared
anchor), MULT single (epoch 0) and MULT cross (epoch 0: the visible label space), each under the run's
default ``memory_semantics: reference``, each stage with a fresh Adam as the engine gives it. The
epoch runs through the method's own ``epoch()``; the pieces it already separates are wrapped with
timers for that epoch only (pytest's ``monkeypatch``, undone after it; nothing in ``dmdl`` is edited):

* features       — ``ctx.features`` (eval-mode features of both modalities, DMDL flip-averaged);
* jaccard+dbscan — the method module's ``cluster_modalities`` (k-reciprocal Jaccard + DBSCAN + the
  guard, per modality);
* assoc+memory   — the rest of the method's ``plan()``: association / label transfer, memories,
  certainties (GMM), the batches of MULT's epoch;
* loading        — the DataLoader producing the batches (``next()`` on the method's batch source:
  the cached image, augmentation, collation; ``workers: 0``, as the presets);
* the step (``method.step``), split by hooks on the model and the optimizer (:class:`StepProbe`):
  ``model fwd`` (the backbone's forward), ``model bwd`` (from the gradient reaching the backbone's
  output to its last parameter gradient), ``optimizer`` (Adam) and ``losses+mem``, the rest of the
  step: every loss term's forward and backward, the memory reads and updates (the reference
  semantics' replayed backward included) and the step's glue (concatenating the views, label
  look-ups, ``.item()``);
* other          — what is left of the epoch (the progress bar, switching to training mode).

``test_train_step`` — one optimisation step (``method.step``) of each case on the first batch of that
epoch's plan (the plan is built once, by the epoch above: clustering is never timed here), under both
memory semantics (DMDL stage 1 reads every memory once, where both give the same step). Before every
round (warm-up included) the bare backbone runs on the same input tensor (the step's views
concatenated), in the same process on the same model: gradients zeroed as the step zeroes them,
forward, ``sum().backward()`` (pytest-benchmark's untimed ``setup``, timed apart), so that the step
and its baseline see the same machine. The overhead ratio is step time / bare time (minimum and
median over the rounds).

At the end a table is printed (machine, threads, load average, both parts, the reference / forward
step ratio) and written as JSON to ``bench/outputs/bench_train_step.json`` (``DMDL_BENCH_JSON``;
``outputs/`` is git-ignored). On a shared machine, repeat the run and keep the fastest run of each
row: ``python bench/summarize_train_step.py run1.json run2.json ...``.

    python -m pytest bench/bench_train_step.py                        # 2 threads, 3 iterations, 5 rounds
    DMDL_BENCH_THREADS=1 DMDL_BENCH_ITERS=5 DMDL_BENCH_ROUNDS=3 python -m pytest bench/bench_train_step.py
    DMDL_BENCH_DATA=/path/to/RegDB python -m pytest bench/bench_train_step.py   # another RegDB root
    python -m pytest bench/bench_train_step.py --benchmark-disable    # CI: each body once

Environment: ``DMDL_BENCH_THREADS`` (torch threads, default 2), ``DMDL_BENCH_ITERS`` (iterations of
each epoch, default 3), ``DMDL_BENCH_ROUNDS`` (timed rounds of each step, default 5, after one warm-up
round), ``DMDL_BENCH_IMAGES`` (training images per modality, default all), ``DMDL_BENCH_DATA`` (a
RegDB root; default: RegDB-mini where ``tests/conftest.py`` looks for it).
No time is asserted; each step is checked to return a finite loss.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

THREADS = int(os.environ.get("DMDL_BENCH_THREADS", "2"))
ITERS = int(os.environ.get("DMDL_BENCH_ITERS", "3"))
ROUNDS = int(os.environ.get("DMDL_BENCH_ROUNDS", "5"))
IMAGES = os.environ.get("DMDL_BENCH_IMAGES")  # cap on the training images per modality (default: all)
WARMUP = 1
# the real RegDB subset, where tests/conftest.py looks for it (never in the repository)
REGDB_MINI = Path(__file__).resolve().parents[2] / "shared/data/RegDB-mini"
DATA = Path(os.environ.get("DMDL_BENCH_DATA", str(REGDB_MINI)))
JSON_OUT = Path(os.environ.get("DMDL_BENCH_JSON", str(Path(__file__).resolve().parent / "outputs"
                                                     / "bench_train_step.json")))


@dataclass(frozen=True)
class Case:
    """One (method, stage, epoch) of the benchmark, on a preset."""

    name: str
    method: str  # "dmdl" or "mult"
    preset: str
    stage: int
    epoch: int
    semantics: tuple[str, ...]  # the memory semantics whose steps differ


CASES = [
    Case("dmdl-stage1", "dmdl", "regdb-cpu", 1, 2, ("reference",)),  # stage 1: both semantics give this step
    Case("dmdl-stage2", "dmdl", "regdb-cpu", 2, 2, ("reference", "forward")),
    Case("mult-single", "mult", "regdb-cpu-mult", 1, 0, ("reference", "forward")),
    Case("mult-cross", "mult", "regdb-cpu-mult", 2, 0, ("reference", "forward")),
]
STEP_PARAMS = [pytest.param(c, s, id=f"{c.name}-{s}") for c in CASES for s in c.semantics]
SPLIT = ["features", "jaccard+dbscan", "assoc+memory", "loading", "model fwd", "model bwd", "losses+mem",
         "optimizer"]
STEP_SPLIT = ["model fwd", "model bwd", "losses+mem", "optimizer"]

RESULTS: dict = {"epoch": {}, "step": {}}


# ------------------------------------------------------------------------------ timing probes
class StepProbe:
    """Splits a training step with hooks on the model and the optimizer (active only inside
    :meth:`time_step`): the backbone's forward, its backward (from the gradient at its output to the
    last parameter gradient), the optimizer step; the rest of the step is losses + memories."""

    def __init__(self, model: torch.nn.Module):
        self.active = False
        self.t: dict[str, float] = {}
        self._optimizers: set[int] = set()
        self.handles = [model.register_forward_pre_hook(self._forward_start),
                        model.register_forward_hook(self._forward_end)]
        self.handles += [p.register_post_accumulate_grad_hook(self._param_grad) for p in model.parameters()
                         if p.requires_grad]

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self._optimizers:
            self._optimizers.add(id(optimizer))
            self.handles += [optimizer.register_step_pre_hook(lambda *_: self._mark("opt0")),
                             optimizer.register_step_post_hook(lambda *_: self._mark("opt1"))]

    def _mark(self, key: str) -> None:
        if self.active:
            self.t[key] = time.perf_counter()

    def _forward_start(self, module, args):
        self._mark("fwd0")

    def _forward_end(self, module, args, out):
        self._mark("fwd1")
        if self.active and isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda grad: self._mark("bwd0"))

    def _param_grad(self, param):
        self._mark("bwd1")  # the last one to fire ends the backbone's backward

    def time_step(self, fn, *args):
        """``fn(*args)`` timed; returns (its result, {part: seconds} with ``step`` the whole)."""
        self.t = {}
        self.active = True
        t0 = time.perf_counter()
        try:
            out = fn(*args)
        finally:
            t1 = time.perf_counter()
            self.active = False
        t = self.t
        missing = {"fwd0", "fwd1", "bwd0", "bwd1", "opt0", "opt1"} - set(t)
        if missing:
            raise RuntimeError(f"the step probe missed {sorted(missing)}: the step did not run the model's "
                               "forward, backward and optimizer step once each")
        parts = {"step": t1 - t0, "model fwd": t["fwd1"] - t["fwd0"], "model bwd": t["bwd1"] - t["bwd0"],
                 "optimizer": t["opt1"] - t["opt0"]}
        parts["losses+mem"] = parts["step"] - parts["model fwd"] - parts["model bwd"] - parts["optimizer"]
        return out, parts


class _TimedIterable:
    """An iterable whose ``next()`` calls are added to ``acc["loading"]``."""

    def __init__(self, iterable, acc: dict):
        self.iterable, self.acc = iterable, acc

    def __iter__(self):
        t = time.perf_counter()
        it = iter(self.iterable)
        self.acc["loading"] += time.perf_counter() - t
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.acc["loading"] += time.perf_counter() - t
            yield item


def _timed(fn, acc: dict, key: str):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] += time.perf_counter() - t
    return wrapper


# ------------------------------------------------------------------------------ the runs
@dataclass
class PresetState:
    """A preset's config, run context (model, optimizer, decoded images) and method per semantics."""

    cfg: object
    ctx: object
    methods: dict
    probe: StepProbe
    preset_iters: dict  # stage -> the preset's iterations per epoch (the projection of the epoch split)
    plans: dict = field(default_factory=dict)  # case name -> the plan its epoch built


_STATES: dict[str, PresetState] = {}


def _config(preset: str, semantics: str, out: Path):
    from dmdl.config import load_config

    cap = ["--max-train-images", IMAGES] if IMAGES else []
    return load_config(preset, ["--data-root", str(DATA), "--output-dir", str(out), "--iters", str(ITERS),
                                "--workers", "0", "--memory-semantics", semantics] + cap)


def preset_state(preset: str, tmp: Path) -> PresetState:
    """Build (once per preset) the context as the engine does, decode every training image into
    the image cache, and one method instance per memory semantics sharing the context."""
    if preset in _STATES:
        return _STATES[preset]
    from dmdl.data.check import preflight
    from dmdl.data.loading import read_image
    from dmdl.methods import get_method
    from dmdl.modalities import MODALITIES
    from dmdl.training.context import build_context, seed_everything, training_records

    cfgs = {s: _config(preset, s, tmp / preset).validate() for s in ("reference", "forward")}
    cfg = cfgs["reference"]
    seed_everything(cfg.run.seed)
    dataset = preflight(cfg.data.dataset, DATA, cfg.data.trial, images=False)
    ctx = build_context(cfg, training_records(dataset, cfg.data.max_train_images, DATA))
    if isinstance(ctx.image_cache, dict):  # steady state: every image decoded once, as after a run's first epoch
        for m in MODALITIES:
            for rec in ctx.train[m]:
                ctx.image_cache[rec.path] = read_image(rec.path)
    methods = {s: get_method(c)(ctx, c) for s, c in cfgs.items()}
    from dmdl.config import load_config

    sch = load_config(preset, []).schedule
    _STATES[preset] = PresetState(cfg, ctx, methods, StepProbe(ctx.model), {s: sch.iters_for(s) for s in (1, 2)})
    return _STATES[preset]


def fresh_optimizer(state: PresetState) -> None:
    """A stage's Adam, as the engine makes it (``Engine._make_optimizer``, without the schedule)."""
    sch = state.cfg.schedule
    params = [p for p in state.ctx.model.parameters() if p.requires_grad]
    state.ctx.optimizer = torch.optim.Adam(params, lr=sch.lr, weight_decay=sch.weight_decay)
    state.probe.watch(state.ctx.optimizer)


def run_epoch_split(state: PresetState, case: Case, monkeypatch) -> dict:
    """One epoch of ``case`` through the method's ``epoch()`` with its pieces timed (module
    docstring); stores the plan for :func:`test_train_step`. Returns the seconds of each part."""
    method = state.methods["reference"]
    module = sys.modules[type(method).__module__]
    acc = dict.fromkeys(["features", "plan", "jaccard+dbscan", "loading"], 0.0)
    steps: list[dict] = []
    probe = state.probe

    def step(*args):
        out, parts = probe.time_step(original_step, *args)
        steps.append(parts)
        return out

    original_step = method.step
    monkeypatch.setattr(state.ctx, "features", _timed(state.ctx.features, acc, "features"))
    monkeypatch.setattr(module, "cluster_modalities", _timed(module.cluster_modalities, acc, "jaccard+dbscan"))
    monkeypatch.setattr(method, "plan", _timed(method.plan, acc, "plan"))
    monkeypatch.setattr(method, "step", step)
    if case.method == "dmdl":  # a generator of (batch, certainties)
        batches = method.batches
        monkeypatch.setattr(method, "batches", lambda *a: _TimedIterable(batches(*a), acc))
    else:  # MULT: one DataLoader per modality, zipped by its epoch
        loaders = method.loaders
        monkeypatch.setattr(method, "loaders", lambda plan: {m: _TimedIterable(dl, acc)
                                                             for m, dl in loaders(plan).items()})
    fresh_optimizer(state)
    t0 = time.perf_counter()
    stats = method.epoch(case.stage, case.epoch)
    total = time.perf_counter() - t0
    monkeypatch.undo()
    state.plans[case.name] = method.last_plan
    split = {"features": acc["features"], "jaccard+dbscan": acc["jaccard+dbscan"],
             "assoc+memory": acc["plan"] - acc["jaccard+dbscan"], "loading": acc["loading"]}
    for part in STEP_SPLIT:
        split[part] = sum(s[part] for s in steps)
    split["other"] = total - sum(split.values())
    split["total"] = total
    return {"seconds": split, "iterations": len(steps), "preset_iterations": state.preset_iters[case.stage],
            "loss": stats["loss"],
            "phase_clock": {k: v for k, v in stats.items() if k.startswith("seconds_")}}


def first_batch(state: PresetState, case: Case) -> tuple:
    """The first training batch of the case's plan, as the method's epoch would draw it, and the
    input of the bare backbone: (step arguments without the plan, x, the model's extra arguments)."""
    from dmdl.modalities import INFRARED, VISIBLE
    from dmdl.training.steps import epoch_seed

    method, plan = state.methods["reference"], state.plans[case.name]
    if case.method == "dmdl":
        batch, certainties = next(iter(method.batches(plan, epoch_seed(state.cfg.run.seed, case.stage, case.epoch), 1)))
        views = [v for m in (VISIBLE, INFRARED) for v in batch[m][:2]]
        return (batch, certainties), torch.cat(views), ()
    loaders = method.loaders(plan)
    vis, ir = next(iter(loaders[VISIBLE])), next(iter(loaders[INFRARED]))
    x = torch.cat([vis[0], vis[1], ir[0]])
    return (vis, ir), x, (torch.arange(len(x)) >= 2 * len(vis[0]),)


def _summary(times: list[float]) -> dict:
    timed = times[WARMUP:] or times  # --benchmark-disable runs a body once, without warm-up
    return {"min": min(timed), "median": statistics.median(timed), "rounds": len(timed)}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def report(request):
    """Threads for the whole module; at its end, the table (printed past the capture) and the JSON."""
    if not (DATA / "idx").is_dir():
        pytest.skip(f"RegDB data not found at {DATA} (set DMDL_BENCH_DATA to a RegDB root)")
    prev = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    RESULTS["machine"] = machine()
    RESULTS["machine"]["load_average_start"] = os.getloadavg()
    yield
    torch.set_num_threads(prev)
    RESULTS["machine"]["load_average_end"] = os.getloadavg()
    text = format_report(RESULTS)
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(RESULTS, indent=2))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + text + f"\n(JSON: {JSON_OUT})", flush=True)


@pytest.fixture(scope="module")
def tmp_runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_train_step")


def ensure_epoch(case: Case, tmp: Path, monkeypatch) -> PresetState:
    """The case's preset state with its epoch run (by ``test_epoch_split``, or here when deselected)."""
    state = preset_state(case.preset, tmp)
    if case.name not in state.plans:
        RESULTS["epoch"][case.name] = run_epoch_split(state, case, monkeypatch)
    return state


# ------------------------------------------------------------------------------ the benchmarks
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_epoch_split(benchmark, case, tmp_runs, monkeypatch):
    state = preset_state(case.preset, tmp_runs)
    benchmark.group = f"epoch ({ITERS} iterations) threads={THREADS}"
    result = benchmark.pedantic(run_epoch_split, args=(state, case, monkeypatch), rounds=1, iterations=1)
    RESULTS["epoch"][case.name] = result
    benchmark.extra_info.update(result)
    assert result["iterations"] == ITERS and math.isfinite(result["loss"])


def bare_forward_backward(model: torch.nn.Module, optimizer, x: torch.Tensor, extra: tuple, times: list) -> None:
    """The bare backbone on the step's input: gradients zeroed as the step zeroes them, forward,
    ``sum().backward()``; appends its seconds to ``times``."""
    t = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    model(x, *extra).sum().backward()
    times.append(time.perf_counter() - t)


@pytest.mark.parametrize("case,semantics", STEP_PARAMS)
def test_train_step(benchmark, case, semantics, tmp_runs, monkeypatch):
    state = ensure_epoch(case, tmp_runs, monkeypatch)
    args, x, extra = first_batch(state, case)
    method, plan = state.methods[semantics], state.plans[case.name]
    step_args = (*args, plan) if case.method == "dmdl" else (plan, *args)  # DMDL.step / MULT.step
    model, optimizer = state.ctx.model, state.ctx.optimizer
    model.train()
    parts: list[dict] = []
    losses: list[float] = []
    bare: list[float] = []

    def step():
        out, p = state.probe.time_step(method.step, *step_args)
        parts.append(p)
        losses.append(out["loss"])

    benchmark.group = f"step {case.preset} threads={THREADS}"
    # each round: the bare forward + backward (pytest-benchmark's untimed setup), then the timed step
    benchmark.pedantic(step, setup=lambda: bare_forward_backward(model, optimizer, x, extra, bare), rounds=ROUNDS,
                       iterations=1, warmup_rounds=WARMUP)
    timed = parts[WARMUP:] or parts
    key = f"{case.name}-{semantics}"
    RESULTS["step"][key] = dict(
        _summary([p["step"] for p in parts]), case=case.name, semantics=semantics, input=list(x.shape),
        bare=_summary(bare), split_median={k: statistics.median(p[k] for p in timed) for k in STEP_SPLIT},
        step_over_backbone=statistics.median(p["step"] / (p["model fwd"] + p["model bwd"]) for p in timed))
    benchmark.extra_info.update(RESULTS["step"][key])
    assert losses and all(math.isfinite(v) for v in losses)


# ------------------------------------------------------------------------------ the report
def machine() -> dict:
    name = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), name)
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": name, "capability": torch.backends.cpu.get_cpu_capability(), "threads": THREADS,
            "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "iterations": ITERS, "rounds": ROUNDS, "data": DATA.name,
            "images_per_modality": int(IMAGES) if IMAGES else "all"}


def format_report(res: dict) -> str:
    m = res["machine"]
    loads = m.get("load_averages", [(m["load_average_start"], m["load_average_end"])])  # one per run
    load = "; ".join(f"{a[0]:.2f} -> {b[0]:.2f}" for a, b in loads)
    runs = f", the fastest of {len(loads)} runs per row" if len(loads) > 1 else ""
    lines = [f"bench_train_step: {m['cpu']} ({m['capability']}), {m['threads']} torch threads, {m['cores']} cores, "
             f"torch {m['torch']}; 1-minute load average at the start -> end: {load}{runs}; {m['data']}, "
             f"training images per modality: {m['images_per_modality']}"]
    if res["step"]:
        lines += ["", *step_table(res["step"], m["rounds"])]
    if res["epoch"]:
        lines += ["", *epoch_table(res["epoch"], m["iterations"])]
    return "\n".join(lines)


def step_table(steps: dict, rounds: int) -> list[str]:
    lines = [f"One training step against the bare backbone forward + backward on the same input, rounds interleaved "
             f"(seconds, {rounds} rounds after {WARMUP} warm-up; ratio = step / bare). The step's split (medians); "
             "step/bb = the step over its own backbone forward + backward (median of the rounds' ratios)",
             f"{'case':<24}{'images':>7}{'step min':>10}{'median':>8}{'bare min':>10}{'median':>8}{'ratio min':>11}"
             f"{'median':>8} |" + "".join(f"{k:>11}" for k in STEP_SPLIT) + f"{'step/bb':>9}"]
    for key, r in steps.items():
        b = r["bare"]
        lines.append(f"{key:<24}{r['input'][0]:>7}{r['min']:10.3f}{r['median']:8.3f}{b['min']:10.3f}{b['median']:8.3f}"
                     f"{r['min'] / b['min']:11.3f}{r['median'] / b['median']:8.3f} |"
                     + "".join(f"{r['split_median'][k]:11.4f}" for k in STEP_SPLIT) + f"{r['step_over_backbone']:9.3f}")
    lines.append("dmdl-stage1: both memory semantics give this step (each memory is read once)")
    for c in CASES:
        ref, fwd = steps.get(f"{c.name}-reference"), steps.get(f"{c.name}-forward")
        if ref and fwd:
            lr, lf = ref["split_median"]["losses+mem"], fwd["split_median"]["losses+mem"]
            lines.append(f"memory semantics {c.name}: reference / forward step min {ref['min'] / fwd['min']:.3f}, "
                         f"median {ref['median'] / fwd['median']:.3f}; losses+mem {1e3 * lr:.1f} / {1e3 * lf:.1f} ms "
                         f"= {lr / lf:.2f}")
    return lines


def epoch_table(epochs: dict, iterations: int) -> list[str]:
    cols = SPLIT + ["other", "total"]
    lines = [f"One epoch of {iterations} iterations, memory_semantics reference (seconds, share of the epoch)",
             f"{'case':<14}" + "".join(f"{k:>16}" for k in cols)]
    for name, r in epochs.items():
        s = r["seconds"]
        lines.append(f"{name:<14}" + "".join(f"{s[k]:>9.2f} ({100 * s[k] / s['total']:3.0f}%)" for k in cols[:-1])
                     + f"{s['total']:>16.2f}")
    for name, r in epochs.items():
        lines.append(f"{name}: the method's own PhaseClock {r['phase_clock']}")
    lines += ["", "Projected to the preset's iterations per epoch (once-per-epoch parts as measured, per-iteration "
              "parts scaled; an estimate, not a measurement)", f"{'case':<14}{'iters':>6}" + "".join(
                  f"{k:>16}" for k in cols)]
    for name, r in epochs.items():
        s, scale = r["seconds"], r["preset_iterations"] / r["iterations"]
        per_epoch = ("features", "jaccard+dbscan", "assoc+memory")
        proj = {k: s[k] if k in per_epoch else s[k] * scale for k in cols[:-1]}
        total = sum(proj.values())
        lines.append(f"{name:<14}{r['preset_iterations']:>6}" + "".join(
            f"{proj[k]:>9.2f} ({100 * proj[k] / total:3.0f}%)" for k in cols[:-1]) + f"{total:>16.2f}")
    return lines
