# tiaki: `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck protos bench clean federation federation-status federation-stop

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

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# Regenerate the committed protobuf code (a test checks it matches).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos \
	  --grpc_python_out=protos --pyi_out=protos protos/tiaki/v1/node.proto

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python tests/bench/bench_node.py
	$(BIN)/python tests/bench/bench_fanout.py
	$(BIN)/python tests/bench/bench_load.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
