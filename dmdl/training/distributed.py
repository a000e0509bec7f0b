"""Training on several processes (GPUs or machines) with ``torchrun``, with the result of one process.

The run is the one-process run, split (docs/cli.md, "Several GPUs"):

- every rank builds the same global batch (same seeds, same draws) and forwards its own block of
  it: the block that ghost-BatchNorm group r sees in one process (:func:`rank_block`), so that
  BatchNorm statistics do not depend on the number of processes; the features of the whole batch
  are all-gathered *with* their gradients (:meth:`Distributed.gather_with_grad`), every loss and
  every memory update runs on the whole batch in its one-process order on every rank (so the
  memories stay bit-identical), and DDP's gradient average equals the one-process gradient;
- features for clustering and testing are extracted from contiguous shards of whole extraction
  batches (:meth:`Distributed.shard`) and all-gathered in dataset order;
- pseudo-labels (Jaccard, DBSCAN, association, certainty, MULT's label transfer) run once, on rank 0,
  and reach the other ranks by broadcast (:meth:`Distributed.share`); the others wait up to
  ``dist_timeout`` seconds, and an error on rank 0 stops every rank with rank 0's message;
- rank 0 alone prints, logs and writes checkpoints; a checkpoint holds the unwrapped model and the
  RNG states every rank shares, so it does not depend on the world size.

A process started by ``torchrun`` knows its place from the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_distributed` joins the group (NCCL on
CUDA, gloo on the CPU).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from dmdl.errors import InputError, TrainingError
from dmdl.training.checkpoint import rng_state, set_rng_state


def torchrun_env() -> dict[str, int] | None:
    """``{"rank", "world_size", "local_rank", "restarts"}`` from the variables torchrun sets, or None
    when this process was not started by torchrun (or by a launcher setting the same variables)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return {"rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"]),
            "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))}


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of equal-sized blocks; the backward sums every rank's gradient of the gathered
    tensor (all-reduce) and returns this rank's block."""

    @staticmethod
    def forward(ctx, block: Tensor, dist: "Distributed") -> Tensor:
        ctx.dist, ctx.rows = dist, block.shape[0]
        parts = [torch.empty_like(block) for _ in range(dist.world_size)]
        with dist.timed("communication"):
            torch.distributed.all_gather(parts, block.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        with ctx.dist.timed("communication"):
            torch.distributed.all_reduce(grad)
        rank = ctx.dist.rank
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows], None


@dataclass
class Distributed:
    """This process's place in the run (one process: rank 0 of 1, every method a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    seconds: dict = field(default_factory=lambda: {"communication": 0.0, "waiting": 0.0}, repr=False)
    """This rank's wall seconds since :meth:`epoch_seconds` last read them: ``communication`` (in
    collectives: feature and gradient gathers, broadcasts, DDP's gradient all-reduce as its buckets
    complete) and ``waiting`` (ranks other than 0: for rank 0's pseudo-labels in :meth:`share`)."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @contextlib.contextmanager
    def timed(self, kind: str):
        """Adds the wall seconds of the ``with`` block to ``seconds[kind]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - start

    def epoch_seconds(self) -> dict[str, float]:
        """The epoch's ``seconds_communication`` (the most any rank spent in collectives) and
        ``seconds_waiting`` (the most any rank other than 0 waited for rank 0's pseudo-labels), for
        the log; the counters restart. Empty in one process. A collective: every rank calls it."""
        if not self.enabled:
            return {}
        mine, self.seconds = dict(self.seconds), {"communication": 0.0, "waiting": 0.0}
        every = self.gather_objects(mine)
        return {"seconds_communication": round(max(s["communication"] for s in every), 1),
                "seconds_waiting": round(max(s["waiting"] for s in every[1:]), 1)}

    def time_gradient_all_reduce(self, ddp: torch.nn.Module) -> None:
        """DDP's gradient all-reduce (the average over ranks, as its default hook) with each
        bucket's time from its start to its completion added to ``seconds["communication"]`` (it
        overlaps the backward pass)."""
        def hook(_state, bucket):
            start, tensor = time.perf_counter(), bucket.buffer().div_(self.world_size)
            fut = torch.distributed.all_reduce(tensor, async_op=True).get_future()

            def done(f):
                self.seconds["communication"] += time.perf_counter() - start
                return f.value()[0]
            return fut.then(done)

        ddp.register_comm_hook(None, hook)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: int, batch: int) -> slice:
        """This rank's contiguous share of ``items`` in whole batches of ``batch`` (the extraction
        batches of one process, so every item is computed in the same batch as there)."""
        batches = -(-items // batch)
        lo, hi = (batches * self.rank) // self.world_size, (batches * (self.rank + 1)) // self.world_size
        return slice(min(lo * batch, items), min(hi * batch, items))

    def gather_rows(self, rows: Tensor) -> Tensor:
        """Every rank's ``rows`` (any count each, same trailing shape), concatenated in rank order;
        no gradient."""
        if not self.enabled:
            return rows
        counts = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(self.world_size)]
        with self.timed("communication"):
            torch.distributed.all_gather(counts, torch.tensor(rows.shape[0], device=rows.device))
            most = int(max(c.item() for c in counts))
            padded = rows.new_zeros((most, *rows.shape[1:]))
            padded[: rows.shape[0]] = rows
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            torch.distributed.all_gather(parts, padded.contiguous())
        return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])

    def gather_with_grad(self, block: Tensor) -> Tensor:
        """Every rank's equal-sized ``block``, concatenated in rank order, differentiable: the
        gradient that reaches this rank's block is the sum over ranks of the gradient of the
        gathered tensor (each rank computes the same loss of the whole batch, so with DDP's average
        the model gets the one-process gradient)."""
        if not self.enabled:
            return block
        return _GatherWithGrad.apply(block, self)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; tensors travel on the CPU)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        with self.timed("communication"):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, fn: Callable[[], Any], device: torch.device) -> Any:
        """``fn()`` run on rank 0 only, its result broadcast to every rank and moved to ``device``.
        The other ranks wait (up to the group's timeout, ``dist_timeout``). Rank 0's random
        generators travel with it: whatever ``fn`` drew (a GMM's initialisation, a shuffle), every
        rank continues from the same state, so the next batches are the same on every rank.

        Raises:
            What ``fn`` raised on rank 0: rank 0 re-raises it; the other ranks raise
            :class:`~dmdl.errors.TrainingError` (or the same builtin type) with rank 0's message.
        """
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = to_device(fn(), torch.device("cpu"))
            except Exception as exc:  # stop every rank with rank 0's message
                error = exc
        box = [(result, None if error is None else (type(error).__name__, str(error)),
                rng_state() if self.is_main else None)]
        with self.timed("communication" if self.is_main else "waiting"):  # the others wait for rank 0 here
            torch.distributed.broadcast_object_list(box, src=0)
        payload = box[0]
        if error is not None:
            raise error
        set_rng_state(payload[2])
        if payload[1] is not None:
            kind, message = payload[1]
            raise (ValueError if kind == "ValueError" else TrainingError)(f"rank 0: {message}")
        return to_device(payload[0], device)

    def all_equal(self, digest: str) -> bool:
        """Whether every rank holds the same ``digest`` (e.g. of its memories)."""
        if not self.enabled:
            return True
        return len(set(self.gather_objects(digest))) == 1

    def gather_objects(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        with self.timed("communication"):
            torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) into every rank's ``model``: what DDP does
        before a training forward, done before an eval-mode extraction too (in one process the
        running statistics are those of ghost group 0, i.e. of rank 0)."""
        if self.enabled:
            with self.timed("communication"):
                for buf in model.buffers():
                    torch.distributed.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor and module in it moved to ``device`` (dataclasses, dicts, lists and
    tuples are walked; other values are kept)."""
    import dataclasses

    if isinstance(obj, (Tensor, torch.nn.Module)):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def rank_block(groups: int, world_size: int) -> int:
    """Chunks the global batch is laid out in: the ghost-BatchNorm groups ``groups`` (each rank then
    forwards ``groups / world_size`` of them), or ``world_size`` chunks when the run has fewer groups
    (the ranks then share BatchNorm statistics, :func:`sync_batchnorm_groups`).

    Raises:
        InputError: ``groups`` > 1 and neither a multiple nor a divisor of ``world_size``.
    """
    g = max(groups, 1)
    if g % world_size and world_size % g:
        raise InputError(f"ghost_bn_groups {groups} does not fit {world_size} processes: it must be a multiple "
                         f"or a divisor of the world size (each process forwards whole BatchNorm groups, or "
                         f"world_size / ghost_bn_groups processes share one)")
    return max(g, world_size)


def check_batch_split(batch_size: int, num_instances: int, world_size: int, groups: int) -> None:
    """Each rank's block of a modality's rows (both views) must hold whole identities.

    Raises:
        InputError: naming the setting that does not fit.
    """
    chunks = max(max(groups, 1), world_size)
    rows = 2 * batch_size  # a modality's rows: originals and augmented views
    if rows % chunks or (rows // chunks) % num_instances:
        raise InputError(f"{world_size} processes (x {chunks // world_size} ghost groups) cannot split a modality's "
                         f"{rows} rows (batch_size {batch_size}, two views) into blocks of whole identities of "
                         f"num_instances {num_instances}: choose a batch_size divisible by "
                         f"{chunks * num_instances // 2} or another world size")


def sync_batchnorm_groups(world_size: int, groups: int) -> list[list[int]] | None:
    """The rank groups that share BatchNorm statistics when a run has fewer ghost groups than
    processes (``world_size / groups`` consecutive ranks each), or None when each rank's own block is
    exactly its BatchNorm groups."""
    g = max(groups, 1)
    if world_size <= g:
        return None
    per = world_size // g
    return [list(range(i * per, (i + 1) * per)) for i in range(g)]


def join_run(backend: str, timeout_s: float, device: str) -> tuple[Distributed, str]:
    """:func:`init_distributed`, once per process: a process group already joined (a trial or seed
    list trains several models in one process) is reused. Silences the other ranks' output."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        env = torchrun_env() or {"local_rank": 0}
        dist = Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), env["local_rank"])
        if torch.cuda.is_available() and device != "cpu":
            device = f"cuda:{dist.local_rank}"
        return dist, device
    dist, device = init_distributed(backend, timeout_s, device)
    quiet_unless_main(dist)
    return dist, device


def _attempt_store(env: dict, timeout: datetime.timedelta):
    """The rendezvous store of this attempt: torchrun's (or rank 0's) TCPStore with a prefix per
    restart. Without it a rank restarted by ``--max-restarts`` reads the previous attempt's gloo
    addresses and cannot connect (seen with torch 2.14)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env["world_size"],
                                       is_master=not agent and env["rank"] == 0, timeout=timeout)
    return torch.distributed.PrefixStore(f"dmdl/attempt_{env['restarts']}", store)


def init_distributed(backend: str, timeout_s: float, device: str) -> tuple[Distributed, str]:
    """Join the process group of a torchrun-launched run (one process: nothing to join).

    Args:
        backend: ``"auto"`` (NCCL on CUDA, gloo on the CPU), ``"nccl"`` or ``"gloo"``.
        timeout_s: the group's timeout (``dist_timeout``): how long a rank waits in a collective,
            e.g. for rank 0's clustering.
        device: the run's ``device`` setting; ``cuda``/``auto`` become ``cuda:<local rank>``.

    Returns:
        (this process's :class:`Distributed`, the device it trains on).

    Raises:
        InputError: NCCL without CUDA; a rank that cannot reach the rendezvous in time (the message
            names the address and the timeout).
    """
    env = torchrun_env()
    if env is None or env["world_size"] == 1:
        return Distributed(), device
    cuda = torch.cuda.is_available() and device != "cpu"
    if backend == "nccl" and not cuda:
        raise InputError("dist_backend nccl needs CUDA devices; this process sees none (use gloo, or auto)")
    chosen = backend if backend != "auto" else ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(env["local_rank"])
        device = f"cuda:{env['local_rank']}"
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        torch.distributed.init_process_group(chosen, store=_attempt_store(env, timeout), rank=env["rank"],
                                             world_size=env["world_size"], timeout=timeout)
    except Exception as exc:  # DistStoreError, RuntimeError (timeout), ...
        raise InputError(f"rank {env['rank']} could not join the process group at {where} within "
                         f"{timeout_s:g} s (dist_timeout): {str(exc).splitlines()[0]}") from None
    return Distributed(env["rank"], env["world_size"], env["local_rank"]), device


def quiet_unless_main(dist: Distributed) -> None:
    """Silence a non-main rank's standard output and warnings (rank 0 speaks for the run); its errors
    still reach the console, through the original standard error."""
    if not dist.is_main:
        sys.stdout = open(os.devnull, "w")
        os.environ["DMDL_NO_PROGRESS"] = "1"  # no progress bars but rank 0's (dmdl.progress)
        import warnings

        warnings.simplefilter("ignore")


def restarted_run(out) -> str | None:
    """The run directory to resume from when torchrun restarted this process after a failure
    (``--max-restarts``; ``TORCHELASTIC_RESTART_COUNT`` > 0), else None: a restarted rank continues
    from the last checkpoint, as ``dmdl train --resume RUN_DIR`` does."""
    env = torchrun_env()
    return str(out) if env is not None and env["restarts"] > 0 else None


def state_digest(obj: Any) -> str:
    """SHA-256 of every tensor and array in ``obj`` (nested dicts/lists; keys sorted), to check that
    the ranks hold bit-identical memories."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(np.ascontiguousarray(x).tobytes())
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def distributed_banner(dist: Distributed, cfg, ctx) -> str:
    """The start-up line of a distributed run: processes, backend, device and the BatchNorm group
    size, the invariant that makes the result independent of the number of processes."""
    groups = max(cfg.model.ghost_bn_groups, 1)
    share = f"1/{ctx.layout} of each step's batch" if groups > 1 else "the whole batch of each step"
    how = (f"BatchNorm synchronised over {dist.world_size // groups} processes"
           if sync_batchnorm_groups(dist.world_size, groups) else f"{ctx.layout // dist.world_size} group(s) per process")
    return (f"distributed: {dist.world_size} processes ({torch.distributed.get_backend()}), rank 0 on {ctx.device}; "
            f"BatchNorm group: {share} ({how}), as the one-process run with ghost_bn_groups "
            f"{cfg.model.ghost_bn_groups}")


__all__ = ["Distributed", "join_run", "restarted_run", "state_digest", "distributed_banner", "init_distributed", "torchrun_env", "rank_block", "check_batch_split",
           "sync_batchnorm_groups", "to_device", "quiet_unless_main"]
