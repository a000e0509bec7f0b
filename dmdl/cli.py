"""The ``dmdl`` command: train, evaluate, demo, make-toy-dataset."""

from __future__ import annotations

import argparse
import sys
import warnings
import time
from pathlib import Path

DEMO_PRESET = "demo"


def _cmd_train(args, extra) -> int:
    from dmdl.config import load_config
    from dmdl.engine import parse_trials, train, train_trials

    overrides = list(extra)
    if args.data_root:
        overrides += ["--data-root", args.data_root]
    trials = None
    if args.trial is not None:
        trials = parse_trials(args.trial)
        if len(trials) == 1 and args.trial.strip().lower() != "all":
            overrides += ["--trial", str(trials[0])]
            trials = None
    cfg = load_config(args.config, overrides)
    if trials is None:
        train(cfg)
    else:
        train_trials(cfg, trials)
    return 0


def _cmd_evaluate(args, extra) -> int:
    if extra:
        raise SystemExit(f"dmdl evaluate: unknown arguments {' '.join(extra)}")
    import torch

    from dmdl.config import make_config
    from dmdl.evaluation.runner import evaluate_model, format_table
    from dmdl.engine import build_model_from_config, load_dataset, resolve_device, write_results

    path = Path(args.checkpoint)
    if not path.is_file():
        raise SystemExit(f"dmdl evaluate: checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise SystemExit(f"dmdl evaluate: {path} is not a dmdl checkpoint (no 'model'/'config' entries)")
    cfg = make_config(ckpt["config"])
    if args.dataset and args.dataset != cfg.dataset:
        raise SystemExit(f"dmdl evaluate: the checkpoint was trained on {cfg.dataset}, not {args.dataset}")
    trial = args.trial if args.trial is not None else cfg.trial
    if cfg.dataset == "regdb" and trial != cfg.trial:
        print(f"warning: the model was trained on RegDB trial {cfg.trial}; testing it on trial {trial}'s split "
              "mixes training identities into the test set", file=sys.stderr)
    device = resolve_device(args.device)
    with warnings.catch_warnings():  # random init is overwritten by the checkpoint
        warnings.simplefilter("ignore")
        model = build_model_from_config(cfg, pretrained="none")
    model.load_state_dict(ckpt["model"])
    model.to(device)
    dataset = load_dataset(cfg.dataset, args.data_root, trial)
    res = evaluate_model(model, cfg.dataset, dataset, cfg.height, cfg.width, device, workers=args.workers)
    print(format_table({"model": res}))
    out = Path(args.output) if args.output else path.with_name(f"evaluation_{cfg.dataset}_trial{trial}.json")
    write_results(out, {"model": res, "checkpoint": str(path), "trial": trial}, cfg.to_dict())
    print(f"wrote {out}")
    return 0


def _cmd_demo(args, extra) -> int:
    from dmdl.config import load_config
    from dmdl.data.toy import ensure_toy_dataset
    from dmdl.engine import train

    root = args.data_root
    if root is None:
        t = time.time()
        root = str(ensure_toy_dataset("regdb"))
        print(f"toy RegDB-layout dataset at {root} ({time.time() - t:.1f} s)")
    cfg = load_config(DEMO_PRESET, list(extra) + ["--data-root", root, "--output-dir", args.output_dir])
    train(cfg)
    return 0


def _cmd_make_toy(args, extra) -> int:
    if extra:
        raise SystemExit(f"dmdl make-toy-dataset: unknown arguments {' '.join(extra)}")
    from dmdl.data.toy import make_toy_dataset

    kw = {"layout": args.layout, "seed": args.seed}
    if args.num_ids is not None:
        kw["num_ids"] = args.num_ids
    out = make_toy_dataset(args.out, **kw)
    print(f"wrote a toy {args.layout} dataset to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmdl", description="Unsupervised visible-infrared person re-identification.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the two-stage pipeline",
                       description="Train with a preset (sysu, regdb, llcm, regdb-cpu) or a YAML file; any config "
                                   "key can be overridden as --key value (e.g. --stage1-epochs 5 --eps 0.5).")
    t.add_argument("--config", required=True, help="preset name or YAML file")
    t.add_argument("--data-root", help="dataset folder in its raw layout")
    t.add_argument("--trial", help="RegDB trial: 1..10, a list such as 1,2,3 (one model per trial, then the "
                                   "mean), or 'all' (the 10 trials, as the papers report RegDB)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on the dataset's test protocol")
    e.add_argument("--dataset", choices=("sysu", "regdb", "llcm"))
    e.add_argument("--data-root", required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--trial", type=int, help="RegDB trial (default: the one it was trained on)")
    e.add_argument("--device", default="auto")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--output", help="JSON file (default: beside the checkpoint)")
    e.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser("demo", help=f"train the {DEMO_PRESET} preset on a toy dataset (or --data-root) on the CPU")
    d.add_argument("--data-root", help="a RegDB-layout folder (default: a generated toy dataset)")
    d.add_argument("--output-dir", default="runs/demo")
    d.set_defaults(func=_cmd_demo)

    m = sub.add_parser("make-toy-dataset", help="write a small generated dataset in a raw layout")
    m.add_argument("--layout", choices=("sysu", "regdb", "llcm"), required=True)
    m.add_argument("--num-ids", type=int)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("out")
    m.set_defaults(func=_cmd_make_toy)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dmdl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
