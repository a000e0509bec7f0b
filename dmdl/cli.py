"""The ``dmdl`` command: train, evaluate, demo, check-dataset, make-toy-dataset.

Arguments, the config and the dataset are checked before torch and the training code are
imported, so that a typo is answered at once. Errors are one line, ``dmdl <verb>: error: ...``,
with exit code 2 for usage and input errors (arguments, config, dataset, checkpoint) and 1 for
failures during a run (a clustering that leaves nothing to train on, a non-finite loss, an
internal error); 130 when interrupted. ``DMDL_TRACEBACK=1`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from dmdl import __version__
from dmdl.data.registry import DATASET_NAMES, get_dataset
from dmdl.errors import DmdlError, InputError
from dmdl.rundir import CHECKPOINT_NAME, CONFIG_NAME, TRIALS_NAME, evaluation_name

DEMO_PRESET = "demo"


class _State:
    """``setup`` until a run starts: a ValueError / OSError then is the user's input (exit 2)."""

    phase = "setup"
    run_dir: Path | None = None  # the run directory of `train` (for the interrupted message)


# ---------------------------------------------------------------------------- train
def _train_config(args, extra):
    """(config, trial list or None) from the arguments; validated, without importing torch."""
    from dmdl.config import load_config, parse_trials

    overrides = list(extra)
    if args.deterministic:
        overrides += ["--deterministic", "true"]
    if args.data_root:
        overrides += ["--data-root", args.data_root]
    trials = None
    if args.resume and not args.config:
        run = Path(args.resume)
        run_dir = run if run.is_dir() else run.parent
        if not run.exists():
            raise FileNotFoundError(f"--resume: no run directory or checkpoint at {run}")
        if not (run_dir / CONFIG_NAME).is_file():
            raise InputError(f"--resume: {run_dir} is not a dmdl run directory (no config.json); "
                             "pass --config too to resume into another directory")
        overrides += ["--resume", str(run), "--output-dir", str(run_dir)]
        try:
            saved = json.loads((run_dir / CONFIG_NAME).read_text())
        except ValueError as exc:
            raise InputError(f"--resume: {run_dir / CONFIG_NAME} is not valid JSON ({exc})") from None
        if (run_dir / TRIALS_NAME).is_file() and args.trial is None:
            trials = json.loads((run_dir / TRIALS_NAME).read_text())["trials"]
        cfg = load_config(saved, overrides)
    else:
        if not args.config:
            raise InputError("pass --config PRESET (or a YAML file), or --resume RUN_DIR")
        if args.resume:
            overrides += ["--resume", args.resume]
        cfg = load_config(args.config, overrides)
    if args.trial is not None:
        trials = parse_trials(args.trial)
        if len(trials) == 1 and args.trial.strip().lower() != "all":
            cfg = cfg.replace(trial=trials[0])
            trials = None
    if trials is not None and not get_dataset(cfg.data.dataset).trials:
        raise InputError(f"--trial all / a trial list is for RegDB; the config's dataset is {cfg.data.dataset!r}")
    pretrained = cfg.model.pretrained
    if pretrained not in ("imagenet", "none") and not Path(pretrained).is_file():
        raise FileNotFoundError(f"--pretrained: no such weights file: {pretrained}")
    return cfg, trials


def _cmd_train(args, extra) -> int:
    cfg, trials = _train_config(args, extra)
    print(f"output directory: {Path(cfg.run.output_dir).resolve()}", flush=True)
    _State.run_dir = Path(cfg.run.output_dir)
    from dmdl.data.check import preflight

    data = cfg.data
    datasets = {}
    for t in trials or [data.trial]:
        datasets[t] = preflight(data.dataset, data.data_root, t, images=data.check_images,
                                max_train_images=data.max_train_images, log=print)
    from dmdl.engine import Engine
    from dmdl.methods import get_method
    from dmdl.trials import train_trials

    if trials is None:
        engine = Engine(cfg, get_method(cfg), dataset=datasets[data.trial], announce=False)
        _State.phase = "run"
        engine.run()
    else:
        _State.phase = "run"
        train_trials(cfg, trials, get_method(cfg))
    return 0


# ---------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args, extra) -> int:
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not Path(args.data_root).is_dir():
        raise FileNotFoundError(f"--data-root: no such directory: {args.data_root}")
    from dmdl.config import config_from_saved
    from dmdl.data.check import available_cores, preflight
    from dmdl.evaluation.runner import evaluate_model, format_table
    from dmdl.models.from_config import build_model_from_config
    from dmdl.training.checkpoint import load_checkpoint
    from dmdl.training.context import resolve_device
    from dmdl.training.log import write_results

    ckpt = load_checkpoint(path, need=("model", "config"))
    cfg = config_from_saved(ckpt["config"])
    data = cfg.data
    if args.dataset and args.dataset != data.dataset:
        raise InputError(f"the checkpoint {path} was trained on {data.dataset}, not {args.dataset}")
    trial = args.trial if args.trial is not None else data.trial
    if get_dataset(data.dataset).trials and trial != data.trial:
        print(f"warning: the model was trained on RegDB trial {data.trial}; testing it on trial {trial}'s split "
              "mixes training identities into the test set", file=sys.stderr)
    dataset = preflight(data.dataset, args.data_root, trial, splits=("test",), log=print)
    device = resolve_device(args.device)
    with warnings.catch_warnings():  # random init is overwritten by the checkpoint
        warnings.simplefilter("ignore")
        model = build_model_from_config(cfg.model, pretrained="none")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        from dmdl.errors import CheckpointError

        raise CheckpointError(f"{path}: the weights do not fit the model of its config "
                              f"({str(exc).splitlines()[0]})") from None
    model.to(device)
    _State.phase = "run"
    workers = min(args.workers, available_cores())
    res = evaluate_model(model, data.dataset, dataset, data.height, data.width, device, workers=workers,
                         interpolation=cfg.resize())
    print(format_table({"model": res}))
    out = Path(args.output) if args.output else path.with_name(evaluation_name(data.dataset, trial))
    write_results(out, {"model": res, "checkpoint": str(path), "trial": trial}, cfg.to_dict())
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------- demo
def _cmd_demo(args, extra) -> int:
    from dmdl.config import load_config

    overrides = list(extra) + ["--output-dir", args.output_dir]
    cfg = load_config(DEMO_PRESET, overrides + ["--data-root", args.data_root or "toy"])  # checks the keys first
    root = args.data_root
    if root is None:
        from dmdl.data.toy import ensure_toy_dataset

        t = time.time()
        root = str(ensure_toy_dataset("regdb"))
        print(f"toy RegDB-layout dataset at {root} ({time.time() - t:.1f} s)")
    cfg = load_config(DEMO_PRESET, overrides + ["--data-root", root])
    print(f"output directory: {Path(cfg.run.output_dir).resolve()}", flush=True)
    from dmdl.data.check import preflight

    dataset = preflight(cfg.data.dataset, cfg.data.data_root, cfg.data.trial, images=cfg.data.check_images, log=print)
    from dmdl.engine import Engine
    from dmdl.methods import get_method

    engine = Engine(cfg, get_method(cfg), dataset=dataset, announce=False)
    _State.phase = "run"
    engine.run()
    return 0


# ---------------------------------------------------------------------------- check-dataset
def _cmd_check_dataset(args, extra) -> int:
    from dmdl.config import parse_trials
    from dmdl.data.check import check_dataset, format_report

    trials = parse_trials(args.trial) if args.trial else None

    def progress(done, total):
        if total >= 2000:
            print(f"  decoded {done}/{total} images", file=sys.stderr, flush=True)

    report = check_dataset(args.dataset, args.data_root, trials=trials, images=not args.no_images,
                           workers=args.workers, progress=progress)
    print(format_report(report, limit=args.limit))
    if not report.ok:
        n = len(report.problems)
        raise InputError(f"{n} problem{'s' if n > 1 else ''} in the dataset at {report.root} (listed above)")
    return 0


# ---------------------------------------------------------------------------- make-toy-dataset
def _cmd_make_toy(args, extra) -> int:
    from dmdl.data.toy import make_toy_dataset

    kw = {"layout": args.layout, "seed": args.seed}
    if args.num_ids is not None:
        kw["num_ids"] = args.num_ids
    out = make_toy_dataset(args.out, **kw)
    print(f"wrote a toy {args.layout} dataset to {out}")
    return 0


# ---------------------------------------------------------------------------- parser
def _train_epilog() -> str:
    from dmdl.config import config_keys_help, preset_names

    return (
        "config keys (override any as --key VALUE or --key=VALUE; shown with their defaults, which a preset "
        "may change):\n" + config_keys_help() + "\n\npresets (dmdl/configs/*.yaml, see the README's Configs "
        "table):\n  " + ", ".join(preset_names()) + "\n\nexamples:\n"
        "  dmdl train --config regdb-cpu --data-root RegDB --trial 1\n"
        "  dmdl train --config sysu --data-root SYSU-MM01 --stage1-epochs 5 --eps 0.5 --deterministic\n"
        "  dmdl train --resume runs/regdb           (continue a stopped run from its last checkpoint)\n"
        "exit codes: 0 done, 2 bad arguments, config, dataset or checkpoint, 1 failure during the run"
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and the parser of each verb."""
    p = argparse.ArgumentParser(prog="dmdl", description="Unsupervised visible-infrared person re-identification.")
    p.add_argument("--version", action="version", version=f"dmdl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,demo,check-dataset,"
                                                                    "make-toy-dataset}")
    verbs = {}

    t = sub.add_parser("train", help="train the two-stage pipeline", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train with a preset or a YAML file; any config key can be overridden as "
                                   "--key VALUE (e.g. --stage1-epochs 5 --eps 0.5).",
                       epilog=_train_epilog())
    t.add_argument("--config", help="preset name or YAML file (required unless --resume RUN_DIR)")
    t.add_argument("--data-root", help="dataset folder in its raw layout")
    t.add_argument("--trial", help="RegDB trial: 1..10, a list such as 1,2,3 (one model per trial, then the "
                                   "mean), or 'all' (the 10 trials, as the papers report RegDB)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from the last checkpoint in RUN_DIR "
                                                       "(its config.json gives the config; --key VALUE changes it, "
                                                       "with a warning)")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels: a run resumed after a kill ends with the same metrics as an "
                        "uninterrupted one (same machine, threads and workers)")
    t.set_defaults(func=_cmd_train)
    verbs["train"] = t

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on the dataset's test protocol",
                       description="Rebuild the model from the config stored in a checkpoint and run the test "
                                   "protocol of its dataset; writes evaluation_<dataset>_trial<T>.json beside it.")
    e.add_argument("--dataset", choices=DATASET_NAMES,
                   help="the dataset the checkpoint was trained on (checked against the checkpoint; default: its own)")
    e.add_argument("--data-root", required=True, help="dataset folder in its raw layout")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pth written by dmdl train (or its run directory)")
    e.add_argument("--trial", type=int, help="RegDB test split 1..10 (default: the trial it was trained on)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    e.add_argument("--workers", type=int, default=2, help="DataLoader workers, capped at the CPU cores (default: 2)")
    e.add_argument("--output", help="JSON file for the metrics (default: beside the checkpoint)")
    e.set_defaults(func=_cmd_evaluate)
    verbs["evaluate"] = e

    d = sub.add_parser("demo", help=f"train the {DEMO_PRESET} preset on a toy dataset (or --data-root) on the CPU",
                       description=f"Train the {DEMO_PRESET} preset (see dmdl train --help for its keys, which "
                                   "can be overridden as --key VALUE) on a generated RegDB-layout dataset.")
    d.add_argument("--data-root", help="a RegDB-layout folder (default: a generated toy dataset)")
    d.add_argument("--output-dir", default="runs/demo", help="where the run writes (default: runs/demo)")
    d.set_defaults(func=_cmd_demo)
    verbs["demo"] = d

    c = sub.add_parser("check-dataset", help="scan a dataset and list every problem",
                       description="Read every idx / id list of a dataset and decode every image it lists; print "
                                   "every problem found, grouped by kind with counts. Exit code 2 when there is one.")
    c.add_argument("--dataset", choices=DATASET_NAMES, required=True)
    c.add_argument("--data-root", required=True, help="dataset folder in its raw layout")
    c.add_argument("--trial", help="RegDB trials to read: 1..10, a list such as 1,2 or 'all' (default: all)")
    c.add_argument("--no-images", action="store_true", help="check the lists and folders only, do not decode images")
    c.add_argument("--workers", type=int, help="threads decoding images (default: the CPU cores)")
    c.add_argument("--limit", type=int, help="show at most this many problems of each kind (default: all)")
    c.set_defaults(func=_cmd_check_dataset)
    verbs["check-dataset"] = c

    m = sub.add_parser("make-toy-dataset", help="write a small generated dataset in a raw layout")
    m.add_argument("--layout", choices=DATASET_NAMES, required=True)
    m.add_argument("--num-ids", type=int, help="identities (default: 48 RegDB, 24 SYSU / LLCM)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("out", help="the new dataset's root folder (must be empty or absent)")
    m.set_defaults(func=_cmd_make_toy)
    verbs["make-toy-dataset"] = m
    return p, verbs


def _message(exc: BaseException) -> str:
    """One readable message: the text of an exception re-raised from a DataLoader worker is its
    traceback; keep its last line, without the exception's type."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text or type(exc).__name__


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, DmdlError):
        return exc.exit_code
    if _State.phase == "setup" and isinstance(exc, (ValueError, OSError, ImportError)):
        return 2
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``dmdl`` command; returns the exit code (argparse's own usage errors exit 2)."""
    parser, verbs = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "demo"):
        verbs[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    _State.phase, _State.run_dir = "setup", None
    try:
        return args.func(args, extra)
    except KeyboardInterrupt:
        hint = ""
        if _State.phase == "run" and _State.run_dir is not None:
            hint = f"; continue with: dmdl train --resume {_State.run_dir}"
        print(f"dmdl {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # one line per error; DMDL_TRACEBACK=1 for the traceback
        if os.environ.get("DMDL_TRACEBACK"):
            raise
        code = _exit_code(exc)
        msg = _message(exc)
        if code == 1 and not isinstance(exc, (DmdlError, OSError, ImportError, MemoryError)):  # unexpected
            msg = f"{type(exc).__name__}: {msg} (an internal error; DMDL_TRACEBACK=1 shows the traceback)"
        print(f"dmdl {args.command}: error: {msg}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
