"""The ``dmdl`` command: train, evaluate, demo, check-dataset, make-toy-dataset; after training:
extract, search, export, plot, visualize, doctor.

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
from dmdl.rundir import CHECKPOINT_NAME, CONFIG_NAME, SEEDS_NAME, TRIALS_NAME, evaluation_name

DEMO_PRESET = "demo"


class _State:
    """``setup`` until a run starts: a ValueError / OSError then is the user's input (exit 2)."""

    phase = "setup"
    run_dir: Path | None = None  # the run directory of `train` (for the interrupted message)
    argv: list[str] = []  # the command's arguments (what `--nproc N` hands to torchrun)


class Terminated(DmdlError):
    """SIGTERM (what SLURM and Kubernetes send before a kill): exit code 143."""

    exit_code = 143


def _on_sigterm(signum, frame):
    raise Terminated("terminated (SIGTERM)")


def _rank_prefix() -> str:
    """``[rank R] `` in a process of a torchrun-launched run (its errors name it), else empty."""
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""


# ---------------------------------------------------------------------------- train
def _train_config(args, extra):
    """(config, trial list or None, seed list or None) from the arguments; validated, without
    importing torch."""
    from dmdl.config import load_config, parse_seeds, parse_trials

    overrides = list(extra)
    if args.deterministic:
        overrides += ["--deterministic", "true"]
    if args.data_root:
        overrides += ["--data-root", args.data_root]
    trials = seeds = None
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
        if (run_dir / SEEDS_NAME).is_file() and args.seeds is None:
            listed = json.loads((run_dir / SEEDS_NAME).read_text())
            seeds, trials = listed["seeds"], listed["trials"] if args.trial is None else trials
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
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
    pretrained = cfg.model.pretrained
    if pretrained not in ("imagenet", "none") and not Path(pretrained).is_file():
        raise FileNotFoundError(f"--pretrained: no such weights file: {pretrained}")
    return cfg, trials, seeds


def _launch(nproc: int, cfg) -> int:
    """``dmdl train --nproc N``: this command again under torchrun, N processes on this machine
    (``torch.distributed.run --standalone``); returns torchrun's exit code."""
    import subprocess

    from dmdl.training.distributed import check_batch_split, rank_block

    rank_block(cfg.model.ghost_bn_groups, nproc)  # the layout errors, before any process starts
    check_batch_split(cfg.data.batch_size, cfg.data.num_instances, nproc, cfg.model.ghost_bn_groups)
    argv, skip = [], False
    for a in _State.argv:  # drop --nproc N / --nproc=N
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "dmdl",
           *argv]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # torchrun would set 1: give each process its share of the cores
        from dmdl.data.check import available_cores

        env["OMP_NUM_THREADS"] = str(max(1, available_cores() // nproc))
    print(f"starting {nproc} processes ({env['OMP_NUM_THREADS']} threads each): {' '.join(cmd[2:])}", flush=True)
    return _wait_for_torchrun(subprocess.Popen(cmd, env=env))


def _wait_for_torchrun(proc) -> int:
    """torchrun's exit code, once it has stopped its workers. A SIGTERM to this process is passed
    on to torchrun, which passes it to the workers (each saves nothing more and prints how to
    resume): this process must not kill torchrun first, or the workers would be orphaned. Ctrl-C
    reaches torchrun and the workers from the terminal; this process keeps waiting for them.

    Returns:
        143 after a SIGTERM, 130 after a Ctrl-C, else torchrun's exit code.
    """
    import signal

    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                forwarded.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 + forwarded[0] if forwarded else code


def _cmd_train(args, extra) -> int:
    cfg, trials, seeds = _train_config(args, extra)
    if args.nproc is not None:
        if args.nproc < 1:
            raise InputError(f"--nproc must be >= 1, got {args.nproc}")
        if "RANK" not in os.environ:
            return _launch(args.nproc, cfg)
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
    from dmdl.trials import train_seeds, train_trials

    if seeds is not None:
        _State.phase = "run"
        train_seeds(cfg, seeds, get_method(cfg), trials)
    elif trials is None:
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
    from dmdl.evaluation.runner import format_table
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
    out = Path(args.output) if args.output else path.with_name(evaluation_name(data.dataset, trial))
    # after training (dmdl.inference.evaluation): the protocol's numbers as evaluate_model's, plus
    # --rerank (k-reciprocal re-ranking) and the pictures (CMC curves, rank-list sheets) beside `out`
    from dmdl.inference.evaluation import evaluate_and_draw

    report = evaluate_and_draw(model, data.dataset, dataset, data.height, data.width, trial, device, workers, out,
                               rerank=args.rerank, pictures=not args.no_pictures, interpolation=cfg.resize())
    res = report["model"]
    print(format_table({"model": res, **({"re-ranked": report["model_reranked"]} if args.rerank else {})}))
    write_results(out, {"model": res, "checkpoint": str(path), "trial": trial,
                        **{k: v for k, v in report.items() if k != "model"}}, cfg.to_dict())
    print(f"wrote {out}" + "".join(f"\nwrote {out.parent / name}" for name in report.get("pictures", [])))
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


# ---------------------------------------------------------------------------- extract
def _checkpoint_path(value: str) -> Path:
    """``--checkpoint``: a file, or a run directory holding ``checkpoint.pth``."""
    path = Path(value)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _cmd_extract(args, extra) -> int:
    from dmdl.inference.images import collect_image_paths

    ckpt = _checkpoint_path(args.checkpoint)
    paths = collect_image_paths(args.images)
    from dmdl.inference.extractor import FeatureExtractor
    from dmdl.inference.features import save_features

    fx = FeatureExtractor(ckpt, device=args.device, batch_size=args.batch_size, workers=args.workers, progress=True)
    fx.check_modality(args.modality)
    _State.phase = "run"
    res = fx.extract(paths, args.modality, on_error="skip", desc="extract")
    for _, why in res.skipped:
        print(f"warning: skipped an unreadable image: {why}", file=sys.stderr)
    save_features(args.out, res.features, res.names, res.modality, fx.weights_hash, str(ckpt), fx.height, fx.width,
                  [f"{n}: {w}" for n, w in res.skipped])
    skipped = f"; skipped {len(res.skipped)} unreadable" if res.skipped else ""
    what = f"{args.modality} features" if args.modality else "features"
    print(f"wrote {args.out}: {len(res.names)} {what} of dimension {fx.feature_dim} (model {fx.weights_hash}){skipped}")
    return 0


# ---------------------------------------------------------------------------- search
def _cmd_search(args, extra) -> int:
    if args.topk < 1:
        raise InputError(f"--topk must be >= 1, got {args.topk}")
    for side in ("query", "gallery"):
        images, feats = getattr(args, side), getattr(args, f"{side}_features")
        if bool(images) == bool(feats):
            raise InputError(f"give either --{side} images or --{side}-features FILE (one of the two)")
        if images and not args.checkpoint:
            raise InputError(f"--{side} images need --checkpoint (or give --{side}-features from dmdl extract)")
    ckpt = _checkpoint_path(args.checkpoint) if args.checkpoint else None
    from dmdl.inference.images import collect_image_paths

    specs = {side: collect_image_paths(getattr(args, side)) for side in ("query", "gallery") if getattr(args, side)}
    from dmdl.inference import retrieval

    fx = None
    if ckpt is not None:
        from dmdl.inference.extractor import FeatureExtractor

        fx = FeatureExtractor(ckpt, device=args.device, batch_size=args.batch_size, progress=True)
    sides = {}
    for side in ("query", "gallery"):
        modality = getattr(args, f"{side}_modality")
        if side in specs:
            fx.check_modality(modality)
            sides[side] = retrieval.side_from_images(fx, specs[side], modality, f"--{side}",
                                                     log=lambda m: print(m, file=sys.stderr))
        else:
            sides[side] = retrieval.side_from_file(getattr(args, f"{side}_features"), f"--{side}-features", modality)
    retrieval.check_same_model(sides["query"], sides["gallery"], fx.weights_hash if fx else None)
    _State.phase = "run"
    rerank = {"k1": args.k1, "k2": args.k2, "lam": args.lam} if args.rerank else None
    payload = retrieval.search_and_write(args.out, sides["query"], sides["gallery"], args.topk, rerank,
                                         pictures=not args.no_pictures)
    out = Path(args.out)
    print(f"ranked {len(sides['gallery'].names)} gallery images for {len(payload['queries'])} queries"
          f"{' (re-ranked)' if rerank else ''}: {out / retrieval.RANKING_NAME}"
          + ("" if args.no_pictures else f", {out / 'index.html'}"))
    return 0


# ---------------------------------------------------------------------------- export
def _cmd_export(args, extra) -> int:
    ckpt = _checkpoint_path(args.checkpoint)
    from dmdl.inference.export import export_model

    _State.phase = "run"
    out = export_model(ckpt, args.format, args.out, device=args.device)
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ---------------------------------------------------------------------------- plot, visualize
def _cmd_plot(args, extra) -> int:
    from dmdl.visualization.curves import redraw_run

    for path in redraw_run(args.run_dir):
        print(f"wrote {path}")
    return 0


def _cmd_visualize(args, extra) -> int:
    if bool(args.features) == bool(args.checkpoint):
        raise InputError("give either --checkpoint CKPT --data-root DIR (its test split) or --features FILE...")
    if args.checkpoint and not args.data_root:
        raise InputError("--checkpoint needs --data-root (the dataset whose test images are shown)")
    from dmdl.inference.picture_inputs import tsne_inputs
    from dmdl.visualization.tsne import plot_tsne

    feats, mods, ids, title, default_out = tsne_inputs(args.checkpoint, args.data_root, args.features, args.trial,
                                                       args.max_images, args.device)
    _State.phase = "run"
    out = plot_tsne(feats, mods, ids, args.out or default_out, title=title, max_ids=args.max_ids)
    print(f"wrote {out} ({len(feats)} images)")
    return 0


# ---------------------------------------------------------------------------- doctor
def _cmd_doctor(args, extra) -> int:
    from dmdl.doctor import as_dicts, format_checks, run_checks

    checks = run_checks()
    print(json.dumps(as_dicts(checks), indent=2) if args.json else format_checks(checks))
    return 1 if any(c.status == "FAIL" for c in checks) else 0


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


def _add_extract_search_parsers(sub, verbs: dict) -> None:
    """The parsers of ``extract`` and ``search`` (after training)."""
    x = sub.add_parser("extract", help="features of images from a checkpoint, to a .npz file",
                       description="Embed images with a checkpoint's model exactly as its evaluation does (test "
                                   "transform, flip averaging, L2 normalisation). An unreadable image is reported "
                                   "and skipped.")
    x.add_argument("--checkpoint", required=True, help="checkpoint.pth (or its run directory) or a slim .pth export")
    x.add_argument("--images", required=True, nargs="+", help="image files, folders (searched recursively) or "
                                                               "glob patterns")
    x.add_argument("--modality", help="visible or infrared: the stem of a two-stream model (required there)")
    x.add_argument("--out", required=True, help="the features file to write (.npz)")
    x.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    x.add_argument("--batch-size", type=int, default=64)
    x.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default: 0)")
    x.set_defaults(func=_cmd_extract)
    verbs["extract"] = x

    s = sub.add_parser("search", help="rank a gallery for query images (JSON, rank-list pictures, index.html)",
                       description="Cross-modality search: ranked gallery lists per query (ranking.json), one "
                                   "rank-list picture per query and an index.html showing them.")
    s.add_argument("--checkpoint", help="the model (needed unless both sides are --*-features files)")
    s.add_argument("--query", nargs="+", help="query image files, folders or globs")
    s.add_argument("--query-features", help="query features from dmdl extract (instead of --query)")
    s.add_argument("--query-modality", help="visible or infrared")
    s.add_argument("--gallery", nargs="+", help="gallery image files, folders or globs")
    s.add_argument("--gallery-features", help="gallery features from dmdl extract (instead of --gallery)")
    s.add_argument("--gallery-modality", help="visible or infrared")
    s.add_argument("--topk", type=int, default=10, help="gallery images listed per query (default: 10)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (Zhong et al. 2017)")
    s.add_argument("--k1", type=int, default=20, help="re-ranking k1 (default: 20)")
    s.add_argument("--k2", type=int, default=6, help="re-ranking k2 (default: 6)")
    s.add_argument("--lambda", dest="lam", type=float, default=0.3, help="re-ranking lambda (default: 0.3)")
    s.add_argument("--no-pictures", action="store_true", help="write ranking.json only")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    s.add_argument("--batch-size", type=int, default=64)
    s.set_defaults(func=_cmd_search)
    verbs["search"] = s


def _add_export_plot_visualize_doctor_parsers(sub, verbs: dict) -> None:
    """The parsers of ``export``, ``plot``, ``visualize`` and ``doctor`` (after training)."""
    o = sub.add_parser("export", help="export the inference graph (onnx, torchscript, slim pth)",
                       description="Export the backbone, GeM and BN neck (L2-normalised features) with the input "
                                   "size, mean/std and modalities as metadata; a two-stream model takes a modality "
                                   "input (0 visible, 1 infrared). pth: the model's weights and config only.")
    o.add_argument("--checkpoint", required=True, help="checkpoint.pth (or its run directory)")
    o.add_argument("--format", required=True, choices=("onnx", "torchscript", "pth"))
    o.add_argument("--out", required=True, help="the file to write")
    o.add_argument("--device", default="cpu", help="where the graph is traced (default: cpu)")
    o.set_defaults(func=_cmd_export)
    verbs["export"] = o

    pl = sub.add_parser("plot", help="redraw a run's training curves (log.csv) and CMC curves",
                        description="Redraw training_curves.png from RUN_DIR/log.csv and the CMC curves of every "
                                    "evaluation_*.json there.")
    pl.add_argument("run_dir", help="a run directory of dmdl train")
    pl.set_defaults(func=_cmd_plot)
    verbs["plot"] = pl

    v = sub.add_parser("visualize", help="t-SNE of test features by modality and identity",
                       description="t-SNE of a checkpoint's test features (or of dmdl extract files), coloured by "
                                   "modality and by identity.")
    v.add_argument("kind", choices=("tsne",))
    v.add_argument("--checkpoint", help="checkpoint.pth (or its run directory)")
    v.add_argument("--data-root", help="the checkpoint's dataset (its test split is shown)")
    v.add_argument("--trial", type=int, help="RegDB split (default: the checkpoint's)")
    v.add_argument("--features", nargs="+", help="features files of dmdl extract (instead of --checkpoint)")
    v.add_argument("--max-images", type=int, default=2000, help="images drawn at most, a seeded sample (2000)")
    v.add_argument("--max-ids", type=int, default=20, help="identities coloured (default: 20)")
    v.add_argument("--out", help="PNG file (default: tsne_<dataset>_trial<T>.png beside the checkpoint)")
    v.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    v.set_defaults(func=_cmd_visualize)
    verbs["visualize"] = v

    dr = sub.add_parser("doctor", help="what is installed and what will run",
                        description="torch / CUDA, dmdl._C and its GPU architectures, GPUs, Triton, faiss, the "
                                    "CPU's vector units and threads, each with what to do when it is missing. Exit "
                                    "code 1 when something dmdl needs is broken.")
    dr.add_argument("--json", action="store_true", help="print the checks as JSON")
    dr.set_defaults(func=_cmd_doctor)
    verbs["doctor"] = dr


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and the parser of each verb."""
    p = argparse.ArgumentParser(prog="dmdl", description="Unsupervised visible-infrared person re-identification.")
    p.add_argument("--version", action="version", version=f"dmdl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,demo,check-dataset,"
                                                                    "make-toy-dataset,extract,search,export,"
                                                                    "plot,visualize,doctor}")
    verbs = {}

    # allow_abbrev=False: a config key must never be read as the abbreviation of an option
    # (`--seed 2` is the config key seed, not `--seeds 2`)
    t = sub.add_parser("train", help="train the two-stage pipeline", formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False,
                       description="Train with a preset or a YAML file; any config key can be overridden as "
                                   "--key VALUE (e.g. --stage1-epochs 5 --eps 0.5).",
                       epilog=_train_epilog())
    t.add_argument("--config", help="preset name or YAML file (required unless --resume RUN_DIR)")
    t.add_argument("--data-root", help="dataset folder in its raw layout")
    t.add_argument("--trial", help="RegDB trial: 1..10, a list such as 1,2,3 (one model per trial, then the "
                                   "mean), or 'all' (the 10 trials, as the papers report RegDB)")
    t.add_argument("--nproc", type=int, help="train on N processes of this machine under torchrun (one per GPU, or "
                                             "gloo processes on the CPU); the result is the one-process run's "
                                             "(README, Several GPUs). Several machines: torchrun ... -m dmdl train")
    t.add_argument("--seeds", help="one model per seed, e.g. 1,2,3 (with --trial: one trial list per seed), then "
                                   "each row, the mean and the standard deviation (results_seeds.json)")
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
                                   "protocol of its dataset; writes evaluation_<dataset>_trial<T>.json beside it, "
                                   "with the CMC curves and rank-list sheets of sample queries (PNG).")
    e.add_argument("--dataset", choices=DATASET_NAMES,
                   help="the dataset the checkpoint was trained on (checked against the checkpoint; default: its own)")
    e.add_argument("--data-root", required=True, help="dataset folder in its raw layout")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pth written by dmdl train (or its run directory)")
    e.add_argument("--trial", type=int, help="RegDB test split 1..10 (default: the trial it was trained on)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    e.add_argument("--workers", type=int, default=2, help="DataLoader workers, capped at the CPU cores (default: 2)")
    e.add_argument("--output", help="JSON file for the metrics (default: beside the checkpoint)")
    e.add_argument("--rerank", action="store_true",
                   help="also report the numbers with k-reciprocal re-ranking (Zhong et al. 2017; k1 20, k2 6, "
                        "lambda 0.3), per direction / mode")
    e.add_argument("--no-pictures", action="store_true",
                   help="do not write the CMC curves and rank-list sheets beside the JSON")
    e.set_defaults(func=_cmd_evaluate)
    verbs["evaluate"] = e

    d = sub.add_parser("demo", help=f"train the {DEMO_PRESET} preset on a toy dataset (or --data-root) on the CPU",
                       allow_abbrev=False,
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

    _add_extract_search_parsers(sub, verbs)
    _add_export_plot_visualize_doctor_parsers(sub, verbs)
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
    _State.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command in ("train", "demo"):
        import signal

        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args, extra)
    except (KeyboardInterrupt, Terminated) as exc:
        hint = ""
        if _State.phase == "run" and _State.run_dir is not None:
            hint = (f"; the last completed epoch is saved in {_State.run_dir / CHECKPOINT_NAME}; continue with: "
                    f"dmdl train --resume {_State.run_dir}")
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"dmdl {args.command}: {_rank_prefix()}{what}{hint}", file=sys.__stderr__, flush=True)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # one line per error; DMDL_TRACEBACK=1 for the traceback
        if os.environ.get("DMDL_TRACEBACK"):
            raise
        code = _exit_code(exc)
        msg = _message(exc)
        if code == 1 and not isinstance(exc, (DmdlError, OSError, ImportError, MemoryError)):  # unexpected
            msg = f"{type(exc).__name__}: {msg} (an internal error; DMDL_TRACEBACK=1 shows the traceback)"
        print(f"dmdl {args.command}: error: {_rank_prefix()}{msg}", file=sys.__stderr__ if _rank_prefix() else sys.stderr,
              flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
