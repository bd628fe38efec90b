# betterproto-nats: everything installs from PyPI into .venv; only Python 3.11+ is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup gen golden demo snapshots test typecheck dist bench bench-streams bench-overload bench-gateway clean

setup: $(STAMP)

# Editable in "strict" mode: a link tree under build/ that mypy and other tools can follow (the
# package names differ from the folders). New modules need a re-link, hence the file list below.
$(STAMP): pyproject.toml $(wildcard runtime/*.py runtime/*/*.py plugin/*.py)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" --config-settings editable_mode=strict
	@touch $(STAMP)

# Generated code goes to gen/ (ignored by git): the example and test protos.
gen: $(STAMP)
	rm -rf gen
	$(BIN)/buf generate

# Pin the generated code of the example protos after an intended generator change (review the diff).
golden: gen
	for p in streaming/v1 fixtures/options/v1 fixtures/hard/v1 fixtures/persist/v1; do cp gen/$$p/__init__.py tests/golden/$$(echo $$p | tr / _).py.golden; done

demo: gen
	$(PY) examples/streaming/demo.py
	$(PY) examples/snapshots/snapshots.py 16
	$(PY) examples/interceptors/auth.py

snapshots: gen
	$(PY) examples/snapshots/snapshots.py

test: gen
	$(PY) -m pytest -q

typecheck: gen
	$(BIN)/mypy --strict runtime plugin

# The sdist and wheel in dist/, for `pip install 'dist/betterproto_nats-<version>-py3-none-any.whl[compiler]'`
# (the README's quick start); --no-isolation builds with the setuptools of .venv, without a network.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation -o dist .


# Every RPC shape with service and client in separate processes against raw nats-py, then against the
# Go project's generated Python (../shared/reference-python, four client/service pairings), then the
# earlier same-process rows (about 6-7 minutes; docs/PERFORMANCE.md).
bench: gen
	$(PY) bench/run.py

# 10 and 10,000 concurrent idle streams, client and service in separate processes: memory per stream
# on each side and heartbeat messages per second (about two minutes; docs/PERFORMANCE.md).
bench-streams: gen
	$(PY) bench/streams10k.py

# A service past its capacity, default settings, its clients in other processes (issue 26): bursts of
# unary calls, 2,000 paced streams with lost peers meanwhile, 2,000 idle streams right after, a unary
# flood at 5x capacity from 4 processes, a handler that blocks the loop (~5 minutes; docs/PERFORMANCE.md).
bench-overload: gen
	$(PY) bench/overload.py

# The HTTP gateway (issue 30), service, gateway and clients in separate processes: unary calls/s and
# added latency against a direct client and raw nats-py, a server stream over SSE, the gateway's memory
# under a slow reader of a 1 GiB download (about a minute; docs/PERFORMANCE.md).
bench-gateway: gen
	$(PY) bench/gateway.py

clean:
	rm -rf gen build dist *.egg-info .pytest_cache .mypy_cache
