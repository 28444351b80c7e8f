# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEV_STAMP := $(VENV)/.dev-installed
# xds-protos ships an older copy of opentelemetry-proto's common_pb2.py; whichever package pip installs last wins,
# and the tests' OTLP receiver needs opentelemetry-proto's own. Reinstall that one package's files, same version, last.
# (The router itself encodes OTLP by hand and imports neither.)
OTEL_PROTO_FIX = $(PIP) install -q --force-reinstall --no-deps \
	"opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
TRAIN_STAMP := $(VENV)/.train-installed
# The shared data set next to this checkout (public benchmark outcomes and prompts; ../shared/data/SOURCES.md):
# training, the benchmarks, the soak and the gaming tests read it. Checked first, so a missing copy is one clear line.
SHARED_DATA := ../shared/data

.PHONY: demo test lint unit integration train bench soak install lock clean check-data

# Listed first by the targets that read the data, so a missing copy stops them before any install.
check-data:
	@test -f $(SHARED_DATA)/outcomes.jsonl.gz -a -f $(SHARED_DATA)/prompts.jsonl.gz || { \
	echo "make $(MAKECMDGOALS) needs the shared data set: $(SHARED_DATA)/outcomes.jsonl.gz and prompts.jsonl.gz next" \
	"to this checkout (see $(SHARED_DATA)/SOURCES.md); make demo does not"; exit 2; }

# constraints.txt: the exact versions the tests pass with (the image installs the same); `make lock` refreshes it.
$(DEV_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(OTEL_PROTO_FIX)
	@touch $@

install: $(DEV_STAMP)

# KEEP=1: leave the stack up for your own requests (curl, explain, /metrics) until Enter.
# USAGE=1: real usage on (README "Real usage"): the router reads token usage from the responses too.
demo: $(DEV_STAMP)
	$(PY) -m devstack.demo $(if $(KEEP),--keep) $(if $(USAGE),--usage)

# Debian packages the tests need: headless Chromium renders the HTML report in a browser test.
SYSTEM_STAMP := $(VENV)/.system-installed
$(SYSTEM_STAMP): $(DEV_STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@command -v kubectl >/dev/null || { echo "kubectl >= 1.27 is needed by the k8s tests (preinstalled on our machines)"; exit 1; }
	@touch $@

# pytest exits 5 when it collects nothing; make treats any non-zero exit as failure, so that can't pass silently.
test: check-data $(DEV_STAMP) $(SYSTEM_STAMP) lint
	$(PY) -m pytest -q

unit: $(DEV_STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(DEV_STAMP)
	$(PY) -m pytest -q tests/integration

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy extproc devstack classifier bench

# The [train] extra pins torch==2.13.0, which this project's machines resolve to a local CPU wheel (pip's find-links).
# Elsewhere PyPI's torch wheel pulls several GB of CUDA packages: install the CPU build first, e.g.
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
$(TRAIN_STAMP): $(DEV_STAMP)
	$(PIP) install -q -c constraints.txt -e '.[dev,train]'
	@touch $@

train: check-data $(TRAIN_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m classifier.train

# >= 5 minutes of real prompts through Envoy + router; fails on any failed/corrupted request, RSS growth, leaked stream.
soak: check-data $(DEV_STAMP)
	$(PY) -m devstack.soak $(SOAK_ARGS)

# Interleaved E / N / router runs with wrk (Debian package), then the classifier micro-benchmark. ~6.5 min.
bench: check-data $(DEV_STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m bench.run $(BENCH_ARGS)

# The newest versions pyproject.toml's ranges allow, in a scratch venv, written to constraints.txt; then run `make test`.
LOCK_VENV := build/lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev]'
	$(LOCK_VENV)/bin/python -m devstack.lock
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
