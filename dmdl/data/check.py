"""Dataset checks before a run, and the whole-dataset scan of ``dmdl check-dataset``.

Neither needs torch: the ``dmdl`` command runs them before it loads the training code.

- :func:`preflight` (``dmdl train``, ``dmdl evaluate``, :class:`dmdl.engine.Engine`): reads the
  split a run uses, checks that no modality is empty, that every test id has images in both
  modalities, and decodes every image the run will read; any problem raises one
  :class:`~dmdl.errors.DatasetError` naming the paths, before training or evaluation starts.
- :func:`check_dataset` (``dmdl check-dataset``): the same checks over the whole dataset (every
  RegDB trial), collecting every problem instead of stopping at the first;
  :func:`format_report` prints them grouped by kind, with counts.

Problem kinds: ``missing root``, ``missing folder``, ``missing idx file``, ``missing id list``,
``malformed idx line``, ``malformed id list``, ``missing image``, ``unreadable image``,
``empty split``, ``test id without images``.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from dmdl.errors import DatasetError
from dmdl.modalities import INFRARED, MODALITIES, VISIBLE

from .registry import get_dataset, open_dataset

from .records import ImageRecord, Problem

#: problems shown in a :class:`DatasetError` message before "... and N more"
SHOWN = 10

# (path, size, mtime_ns) of images that decoded: a second check in the same process is free
_DECODED: set[tuple[str, int, int]] = set()


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------- images
def image_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image (None: it decodes).

    The whole file is decoded (JPEG at 1/8 scale, which still reads every byte of the
    compressed data), so a truncated file is caught, not only a bad header.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
                if img.width < 1 or img.height < 1:
                    return f"empty image ({img.width}x{img.height})"
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        if type(exc).__name__ == "UnidentifiedImageError":
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1
            return "empty file (0 bytes)" if size == 0 else "not an image file PIL can identify"
        text = str(exc).replace(repr(str(path)), "the file").replace(str(path), "the file")
        if "truncated" in text.lower():
            return f"truncated file ({text})"
        return f"{type(exc).__name__}: {text}"
    return None


def scan_images(paths: Iterable[str], workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Decode every image of ``paths`` (threads: PIL decodes without the GIL); one
    ``unreadable image`` (or ``missing image``) problem per file that fails."""
    todo = []
    for p in dict.fromkeys(paths):
        try:
            st = os.stat(p)
        except OSError:
            todo.append((p, None))
            continue
        if (p, st.st_size, st.st_mtime_ns) not in _DECODED:
            todo.append((p, (p, st.st_size, st.st_mtime_ns)))
    workers = workers or available_cores()
    problems: list[Problem] = []
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (p, key), why in zip(todo, pool.map(image_problem, [p for p, _ in todo], chunksize=64)):
            done += 1
            if progress is not None and (done % 2000 == 0 or done == len(todo)):
                progress(done, len(todo))
            if why is None:
                if key is not None:
                    _DECODED.add(key)
            elif why == "file not found":
                problems.append(Problem("missing image", p, f"image not found: {p}", True))
            else:
                problems.append(Problem("unreadable image", p, f"cannot decode image {p}: {why}"))
    return problems


# ---------------------------------------------------------------------------- splits
def _test_folders(ds, name: str, pid: int, modality: str) -> str:
    if name == "sysu":
        from .sysu import SYSU_IR_CAMS, SYSU_RGB_CAMS

        cams = SYSU_RGB_CAMS if modality == VISIBLE else SYSU_IR_CAMS
        return f"none of {', '.join(f'cam{c}/{pid:04d}' for c in cams)} under {ds.data_dir} holds a file"
    from .llcm import LLCM_NIR_CAMS, LLCM_VIS_CAMS

    cams, sub = (LLCM_VIS_CAMS, "test_vis") if modality == VISIBLE else (LLCM_NIR_CAMS, "test_nir")
    return f"none of {sub}/cam{{{','.join(map(str, cams))}}}/{pid:04d} under {ds.root} holds a file"


def split_problems(ds, name: str) -> list[Problem]:
    """Empty modalities and test ids without images in ``ds`` (a reader's result)."""
    out: list[Problem] = []
    info = get_dataset(name)
    label = info.title
    words = {VISIBLE: "visible", INFRARED: info.infrared_word}

    def source(split: str, modality: str) -> Path | None:
        """The file or folder the split is read from (None when it is itself missing)."""
        if name == "regdb":
            f = ds.idx_file(split, modality)
        elif name == "llcm":
            f = ds.root / "idx" / f"train_{'vis' if modality == VISIBLE else 'nir'}.txt" if split == "train" \
                else ds.root / ("test_vis" if modality == VISIBLE else "test_nir")
        else:
            f = ds.data_dir / "exp"
        return f if f.exists() else None

    for split in ("train", "test"):
        for m in MODALITIES:
            recs = getattr(ds, f"{split}_{m}")
            src = source(split, m)
            if not recs and src is not None:
                where = f"{src} lists none" if src.is_file() else f"nothing found under {src}"
                out.append(Problem("empty split", str(src),
                                   f"{label}: no {words[m]} {split} image ({where})"))
    test_ids = ds.test_ids
    have = {m: {r.pid for r in getattr(ds, f"test_{m}")} for m in MODALITIES}
    for pid in test_ids:
        for m in MODALITIES:
            if pid in have[m] or not getattr(ds, f"test_{m}"):
                continue  # an empty modality is reported once, above
            if name == "regdb":
                src = ds.idx_file("test", m)
                other = words[INFRARED if m == VISIBLE else VISIBLE]
                msg = f"RegDB test id {pid} has {other} images but no {words[m]} image in {src}"
            else:
                src = ds.data_dir if name == "sysu" else ds.root
                msg = f"{label} test id {pid} has no {words[m]} image: {_test_folders(ds, name, pid, m)}"
            out.append(Problem("test id without images", str(src), msg))
    return out


# ---------------------------------------------------------------------------- preflight
def _raise(problems: Sequence[Problem], name: str, root, trial: int | None) -> None:
    problems = list(dict.fromkeys(problems))
    if not problems:
        return
    if len(problems) == 1:
        raise DatasetError(problems[0].message, problems)
    info = get_dataset(name)
    what = info.title + (f" trial {trial}" if info.trials and trial else "")
    lines = [f"{len(problems)} problems in {what} at {root}:"]
    lines += [f"  {p.message}" for p in problems[:SHOWN]]
    if len(problems) > SHOWN:
        lines.append(f"  ... and {len(problems) - SHOWN} more")
    lines.append(f"(dmdl check-dataset --dataset {name} --data-root {root} lists every problem of the dataset)")
    raise DatasetError("\n".join(lines), problems)


def preflight(name: str, root, trial: int = 1, *, images: bool = True, splits: Sequence[str] = ("train", "test"),
              max_train_images: int | None = None, workers: int | None = None, log: Callable | None = None):
    """Read ``name`` at ``root`` and check what a run will use; returns the reader.

    Args:
        splits: the splits whose images the run reads (``evaluate``: only ``"test"``); the
            idx files and folders of the whole dataset are checked in any case.
        images: decode every image of those splits (the first ``max_train_images`` of
            each training modality when set).
        log: called with one line on how long the image check took.

    Raises:
        ValueError: unknown dataset name or no root.
        DatasetError: every problem found (the message lists the first ten, with paths).
    """
    problems: list[Problem] = []
    ds = open_dataset(name, root, trial, problems)
    if not any(p.kind == "missing root" for p in problems):
        problems += split_problems(ds, name)
    if images:  # the images that were listed, even when the lists have problems: one report of all
        recs: list[ImageRecord] = []
        if "train" in splits:
            for m in MODALITIES:
                recs += getattr(ds, f"train_{m}")[: max_train_images or None]
        if "test" in splits:
            recs += ds.test_visible + ds.test_infrared
        t = time.time()
        problems += scan_images([r.path for r in recs], workers=workers)
        if log is not None and time.time() - t > 1.0:
            log(f"checked {len(recs)} images in {time.time() - t:.1f} s")
    _raise(problems, name, root, trial)
    return ds


# ---------------------------------------------------------------------------- check-dataset
@dataclass
class CheckReport:
    """What :func:`check_dataset` found."""

    dataset: str
    root: str
    trials: list[int] = field(default_factory=list)
    images: int = 0  # distinct image files listed by the dataset
    decoded: int | None = None  # images decoded (None: not checked)
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # "train visible" -> images (RegDB: first trial)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_kind(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in self.problems:
            out.setdefault(p.kind, []).append(p)
        return out


def check_dataset(name: str, root, trials: Sequence[int] | None = None, images: bool = True,
                  workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Every problem of a dataset on disk (never raises for the dataset's content).

    Args:
        trials: RegDB trials to read (default all ten); ignored for SYSU-MM01 / LLCM.
        images: decode every listed image.

    Raises:
        ValueError: unknown dataset name.
    """
    info = get_dataset(name)
    t0 = time.time()
    trials = list(trials or range(1, info.trials + 1)) if info.trials else []
    report = CheckReport(name, str(Path(root).expanduser().resolve()), trials)
    problems: list[Problem] = []
    paths: dict[str, None] = {}
    for t in trials or [1]:
        found: list[Problem] = []
        ds = open_dataset(name, root, t, found)
        problems += found
        if any(p.kind == "missing root" for p in found):
            break
        problems += split_problems(ds, name)
        for split in ("train", "test"):
            for m in MODALITIES:
                recs = getattr(ds, f"{split}_{m}")
                report.counts.setdefault(f"{split} {m}", len(recs))  # the first trial's
                paths.update(dict.fromkeys(r.path for r in recs))
    report.images = len(paths)
    if images and paths:
        problems += scan_images(paths, workers=workers, progress=progress)
        report.decoded = len(paths)
    report.problems = list(dict.fromkeys(problems))
    report.seconds = time.time() - t0
    return report


def format_report(report: CheckReport, limit: int | None = None) -> str:
    """The report as text: a summary, the count per kind, then every problem by kind
    (at most ``limit`` per kind when given)."""
    label = get_dataset(report.dataset).title
    trials = f", trials {report.trials[0]}-{report.trials[-1]}" if len(report.trials) > 1 else \
        (f", trial {report.trials[0]}" if report.trials else "")
    per_trial = f" (trial {report.trials[0]})" if report.trials else ""
    lines = [f"{label} at {report.root}{trials}"]
    if report.counts:
        lines.append("  images per split" + per_trial + ": " +
                     ", ".join(f"{k} {v}" for k, v in report.counts.items()))
    checked = f"{report.decoded} decoded" if report.decoded is not None else "not decoded (--no-images)"
    lines.append(f"  {report.images} distinct image files listed, {checked} ({report.seconds:.1f} s)")
    if report.ok:
        lines.append("no problem found")
        return "\n".join(lines)
    groups = report.by_kind()
    lines.append(f"{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''}: " +
                 ", ".join(f"{kind} {len(ps)}" for kind, ps in groups.items()))
    for kind, ps in groups.items():
        lines.append(f"{kind} ({len(ps)}):")
        shown = ps if limit is None else ps[:limit]
        lines += [f"  {p.message}" for p in shown]
        if len(shown) < len(ps):
            lines.append(f"  ... and {len(ps) - len(shown)} more")
    return "\n".join(lines)


__all__ = ["available_cores", "image_problem", "scan_images", "split_problems", "preflight",
           "CheckReport", "check_dataset", "format_report"]
