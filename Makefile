# imgate developer entry points. `make test` works on a fresh machine: it creates .venv, installs the
# dependencies, compiles the Cython/C extensions and runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp

.PHONY: all build services browser proto test check cluster chaos bench bench-im bench-groups bench-cluster-im bench-upstream bench-scale bench-micro ratios wheel clean run fuzz test-asan

all: build

$(STAMP): requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	# develop against src/: a .pth entry and an `imgate` command in the venv (no reinstall per change)
	$(PY) -c 'import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], "imgate-dev.pth").write_text("$(CURDIR)/src\n")'
	printf '#!/bin/sh\nexec "$(CURDIR)/$(VENV)/bin/python" -m imgate "$$@"\n' > $(VENV)/bin/imgate
	chmod +x $(VENV)/bin/imgate
	touch $(STAMP)

build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace -j 2

# real Redis, Kafka and MariaDB (Galera) for the cluster tests (installed once, cached under .cache/)
services:
	bash scripts/services.sh install

# headless Chromium + chromedriver for tests/browser (Debian packages, installed once when missing)
browser:
	bash scripts/install-browser.sh

# every test: tests/unit, tests/integration (nodes, cluster, Redis/Kafka) and tests/browser; CI runs this
test: build services browser
	$(PY) -m pytest -q tests

# the edit-compile-test loop: tests/unit only (in process, no services), well under a minute
check: build
	$(PY) -m pytest -q tests/unit

# Long fuzzing under atheris (installed on first use): every harness of fuzz/harnesses.py for FUZZ_RUNS
# inputs, memory bounded by libFuzzer's -rss_limit_mb (fuzz/campaign.py prints inputs, exec/s, coverage
# and peak RSS of each). With clang, the extensions are built in a copy of the tree under build/fuzz with
# IMGATE_SANITIZE=fuzz (libFuzzer's coverage counters, ASan, UBSan) and atheris's ASan runtime is
# preloaded, so the fuzzer is guided inside the compiled parsers too; without clang only the Python code
# is covered (said so, not silently). `make test` runs the harnesses briefly (test_fuzz_smoke).
FUZZ_RUNS ?= 1000000
FUZZ_RSS_MB ?= 2048
FUZZ_DIR := build/fuzz
FUZZ_ARGS ?=
fuzz: build
	$(PY) -c 'import atheris' 2>/dev/null || $(PIP) install --quiet atheris
	if command -v clang >/dev/null; then \
		rm -rf $(FUZZ_DIR) && mkdir -p $(FUZZ_DIR) && \
		cp -r setup.py pyproject.toml README.md csrc src fuzz $(FUZZ_DIR)/ && \
		find $(FUZZ_DIR) -name '*.so' -delete && \
		(cd $(FUZZ_DIR) && IMGATE_SANITIZE=fuzz $(abspath $(PY)) setup.py --quiet build_ext --inplace -j 2) && \
		PYTHONPATH=src $(PY) fuzz/campaign.py --tree $(FUZZ_DIR) --runs $(FUZZ_RUNS) --rss-mb $(FUZZ_RSS_MB) $(FUZZ_ARGS); \
	else \
		echo "make fuzz: no clang here (apt-get install clang): the extensions are fuzzed WITHOUT coverage" >&2; \
		PYTHONPATH=src $(PY) fuzz/campaign.py --runs $(FUZZ_RUNS) --rss-mb $(FUZZ_RSS_MB) $(FUZZ_ARGS); \
	fi

# The unit tests against the extensions built with AddressSanitizer and UndefinedBehaviorSanitizer, in a
# copy of the tree under build/asan (the normal build stays as it is); the sanitizer runtimes are
# preloaded into the venv's python. Leak checking is off: the interpreter itself never frees everything.
ASAN_DIR := build/asan
ASAN_TESTS ?= tests/unit
test-asan: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r setup.py pyproject.toml README.md csrc src tests fuzz docs $(ASAN_DIR)/
	find $(ASAN_DIR) -name '*.so' -delete
	cd $(ASAN_DIR) && IMGATE_SANITIZE=1 $(abspath $(PY)) setup.py --quiet build_ext --inplace -j 2
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		PYTHONPATH=src $(abspath $(PY)) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)

# a whole cluster on loopback in the foreground (Redis, Kafka, 2 proxies, 2 logic, 1 push); Ctrl-C stops it
cluster: build services
	$(PY) scripts/cluster.py

# The whole cluster (2 proxies, 2 logic, 2 im, 2 consumers on the MariaDB Galera pair, push, Redis behind
# Sentinel, Kafka) under faults in turn while 1,000 clients send sequence-numbered single-chat and group
# messages until 100,000 are acknowledged and the last fault is over; every inbox and group timeline
# checked: lost, duplicated, seqs reused or skipped, unavailability per fault (benchmarks/chaos.py).
# 30-40 min on a loaded 2-core machine (bounded at 50 min of sending); JSON in
# benchmarks/results/chaos-latest.json. CHAOS_ARGS passes options (--rate, --target, --duration, ...).
chaos: build services
	PYTHONPATH=src $(PY) benchmarks/chaos.py $(CHAOS_ARGS)

# Cluster single chat: messages per second and per CPU-second of every server process, p50/p99
# send-to-delivery, at a series of rates; CPU split per process (benchmarks/cluster_im_bench.py). ~4 min.
bench-cluster-im: build services
	PYTHONPATH=src $(PY) benchmarks/cluster_im_bench.py $(BENCH_CLUSTER_IM_ARGS)

# Load benchmarks against the peers and the machine's limit (benchmarks/load/README.md); about 10-20 min.
# `make bench SCALE=0.1` (or BENCH_SCALE=0.1) for a quick check; BENCH_ARGS passes more options to run.py.
BENCH_STAMP := $(VENV)/.bench-deps-stamp
SCALE ?= $(BENCH_SCALE)

$(BENCH_STAMP): benchmarks/requirements.txt $(STAMP)
	$(PIP) install --quiet -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: build services $(BENCH_STAMP)
	PYTHONPATH=src $(PY) benchmarks/load/run.py $(if $(SCALE),--scale $(SCALE)) $(BENCH_ARGS)
	PYTHONPATH=src $(PY) benchmarks/im_bench.py $(if $(SCALE),--scale $(SCALE)) --json benchmarks/results/im-latest.json
	PYTHONPATH=src $(PY) benchmarks/upstream_bench.py --json benchmarks/results/upstream-latest.json
	PYTHONPATH=src $(PY) benchmarks/group_bench.py $(if $(SCALE),--scale $(SCALE)) --json benchmarks/results/group-latest.json
	$(MAKE) --no-print-directory bench-scale

# IM groups (benchmarks/group_bench.py): a 200-member write-mode group at 100 messages/s (p99 until fully
# fanned out) and a 10,000-member read-mode group against a room push to the same connections; ~2 min
bench-groups: build
	PYTHONPATH=src $(PY) benchmarks/group_bench.py $(if $(SCALE),--scale $(SCALE)) --json benchmarks/results/group-latest.json

# issue 15's figures (a few minutes): serve --workers 1 vs 2 (connect storm, fan-out and unicast CPU per
# delivery, the coordinator's share), then 15,000 clients reconnecting after their proxy is killed in a
# loopback cluster (time until all are back, p99 auth latency, auth timeouts, peak CPU of logic and Redis)
bench-scale: build services
	PYTHONPATH=src $(PY) benchmarks/scale_bench.py --workers 1,2 $(if $(SCALE),--scale $(SCALE)) --json benchmarks/results/scale-latest.json
	PYTHONPATH=src $(PY) benchmarks/reconnect_storm.py $(if $(SCALE),--scale $(SCALE)) --json benchmarks/results/storm-latest.json

# upstream round trips (op 4 -> imgate serve -> a trivial HTTP backend -> op 5) per server CPU-second and
# the p99 the gateway adds (benchmarks/upstream_bench.py); about 15 s
bench-upstream: build
	PYTHONPATH=src $(PY) benchmarks/upstream_bench.py --json benchmarks/results/upstream-latest.json

# IM single chat against a real imgate serve (benchmarks/im_bench.py): throughput, latency at a fixed rate,
# sync of offline messages; about a minute. BENCH_IM_ARGS passes options (--pairs, --im-sync normal, ...).
bench-im: build
	PYTHONPATH=src $(PY) benchmarks/im_bench.py $(if $(SCALE),--scale $(SCALE)) $(BENCH_IM_ARGS)

bench-micro: build
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-only -p no:cacheprovider

ratios: build
	PYTHONPATH=src $(PY) benchmarks/ratios.py --json benchmarks/results/ratios-latest.json

wheel: $(STAMP)
	$(PIP) wheel --quiet --no-deps --no-build-isolation -w dist .

# regenerate the internal RPC messages (src/imgate/protocol/imgate_pb2.py) from proto/imgate.proto
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=src/imgate/protocol proto/imgate.proto

# the all-in-one node on 127.0.0.1 with embedded defaults; prints the API key it creates on the first
# run and the demo page's key; the demo page may mint tokens (--demo, loopback only)
run: build
	$(VENV)/bin/imgate serve --demo --data-dir .data

clean:
	rm -rf build dist src/*.egg-info src/imgate/_core/*.c src/imgate/_core/*.so src/imgate/http/*.c src/imgate/http/*.so src/imgate/logic/*.c src/imgate/logic/*.so .pytest_cache
