"""Benchmark sizes and thread counts from the environment, shared by the suites of bench/:
``DMDL_BENCH_N=4000,12000`` and ``DMDL_BENCH_THREADS=1,2`` replace a suite's defaults."""

from __future__ import annotations

import os

import pytest


def sizes_from_env(default: int, slow: tuple[int, ...]) -> list:
    """pytest params of the sizes N: ``DMDL_BENCH_N``'s, or ``default`` plus the ``slow`` ones
    (marked slow: run with --run-slow)."""
    env = os.environ.get("DMDL_BENCH_N")
    if env:
        return [pytest.param(int(n), id=f"N{int(n)}") for n in env.split(",") if n.strip()]
    return [pytest.param(default, id=f"N{default}")] + [pytest.param(n, id=f"N{n}", marks=pytest.mark.slow)
                                                        for n in slow]


def threads_from_env(default: list[int]) -> list[int]:
    """The thread counts to run: ``DMDL_BENCH_THREADS``'s, or ``default``."""
    env = os.environ.get("DMDL_BENCH_THREADS")
    return [int(t) for t in env.split(",")] if env else list(default)
