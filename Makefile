# tiaki: `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit lint typecheck protos bench clean federation federation-status federation-stop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python deploy/demo.py

# Three nodes as background processes over mTLS, and federation-run/federation.yaml
# for `tiaki --config federation-run/federation.yaml ...`; stop them with federation-stop.
federation: $(STAMP)
	$(BIN)/python deploy/local_federation.py start --nodes 3 --dir federation-run

federation-status: $(STAMP)
	$(BIN)/python deploy/local_federation.py status --dir federation-run

federation-stop: $(STAMP)
	$(BIN)/python deploy/local_federation.py stop --dir federation-run

# Coverage is measured over node, coordinator and the contract package; the floor
# sits just under today's figure, so a change that drops tests is caught.
COVERAGE_FLOOR := 92

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --cov --cov-report= --cov-fail-under=$(COVERAGE_FLOOR)

# The unit tests alone (no sockets, no fuzzing, no large statistical samples): well
# under a minute.
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit -m "not slow and not fuzz and not statistical"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# Regenerate the committed protobuf code (a test checks it matches).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos \
	  --grpc_python_out=protos --pyi_out=protos protos/tiaki/v1/node.proto protos/tiaki/v1/hub.proto

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

# Benchmarks (not part of `make test`): bench-results/results.md and its plots. The peers
# Tumult Analytics and SmartNoise SQL get virtual environments of their own under
# .venv-peers/ (their pins conflict with tiaki's); one that cannot be installed here is
# reported as not available, with the reason, and the rest still run.
.PHONY: bench-large bench-peers
PEERS := .venv-peers

bench: $(VENV)/.bench-installed bench-peers
	$(BIN)/python -m tests.bench.bench_engines --profile
	$(BIN)/python -m tests.bench.bench_fanout
	$(BIN)/python -m tests.bench.bench_accuracy
	$(BIN)/python -m tests.bench.report
	$(BIN)/python -m tests.bench.bench_node --skip-peer
	$(BIN)/python tests/bench/bench_load.py

# The same comparison at 10M records (about 30 minutes the first time, which builds the data).
bench-large: $(VENV)/.bench-installed bench-peers
	$(BIN)/python -m tests.bench.bench_engines --records 10000000 --out engines-large.json
	$(BIN)/python -m tests.bench.report

bench-peers: $(PEERS)/tumult/.installed $(PEERS)/smartnoise/.installed

$(PEERS)/%/.installed: tests/bench/peers/%-requirements.txt
	$(PYTHON) -m tests.bench.peers.setup_venv $*

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
