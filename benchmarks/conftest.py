"""pytest glue for the micro-benchmarks.

The benchmark modules are named ``bench_*.py`` so that the default ``python_files`` pattern
(``test_*.py``) never picks them up and a plain ``pytest`` (testpaths = tests) stays benchmark-free.
When ``benchmarks/`` is named explicitly (``make bench-micro``), this hook collects them.

Run: ``.venv/bin/python -m pytest benchmarks -q --benchmark-enable --benchmark-only -p no:cacheprovider``
"""

from fnmatch import fnmatch

import pytest


def pytest_collect_file(file_path, parent):
    name = file_path.name
    if not (name.startswith("bench_") and name.endswith(".py")):
        return None
    # pytest's own collector already takes files named on the command line, and any the ini's
    # python_files pattern matches: collecting them here too would run every benchmark twice.
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch(name, pattern) for pattern in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)
