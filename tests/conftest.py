"""Test-wide setup for tests/unit, tests/integration and tests/browser.

- The shared helpers live beside this file (helpers, nodeutil, clusterutil, services, polling, cache_contract);
  this directory is put on sys.path so every test module imports them by name.
- The real Redis and Kafka fixtures come from the `services` plugin.
- Hypothesis runs with no per-example deadline (profile "imgate").
- With the environment variable CI set (CI runs with CI=true) a skip is a failure: in CI every test
  must run, so a missing browser or service shows up red instead of disappearing into a skip line.
"""

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# No per-example deadline anywhere: these machines are shared and noisy, and a deadline is a wall-clock
# assertion. Examples that are too slow show up in the benchmarks, not as red tests.
settings.register_profile("imgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("imgate")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

pytest_plugins = ["services"]


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _fail_skip(report, where: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped {where} while CI is set (skips are failures in CI): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # an expected failure (xfail) is reported as skipped too; it is not a missing dependency
    if _ci() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report, "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped:  # a module-level skip or importorskip
        _fail_skip(report, "module")
