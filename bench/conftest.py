"""pytest configuration of the benchmark suites (run them by path: `pytest bench/bench_jaccard.py`)."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run the large (slow) benchmark sizes")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: large benchmark size, run only with --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="large size: pass --run-slow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
