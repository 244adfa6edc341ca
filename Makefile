# Every target that runs code bootstraps .venv first, so a fresh clone needs only `make train` / `make test`.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# CPU build by default (CI, laptops). GPU users: make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<cuda index url>
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS       ?=
PYTEST_ARGS ?=
STAMP      := $(VENV)/.installed-stamp

.PHONY: install train test ui server promote fetch bench lint clean

# `make server`: a shared tracking server with its own store; artifacts are proxied through it.
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
SERVER_STORE ?= sqlite:///mlflow-server.db
SERVER_ARTIFACTS ?= ./mlartifacts-server

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m pipeline.train $(ARGS)

fetch: $(STAMP)
	$(BIN)/python -m pipeline.fetch $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts --host 127.0.0.1 --port 5000

server: $(STAMP)
	$(BIN)/mlflow server --backend-store-uri $(SERVER_STORE) --artifacts-destination $(SERVER_ARTIFACTS) --host $(SERVER_HOST) --port $(SERVER_PORT)

promote: $(STAMP)
	$(BIN)/python -m pipeline.promote $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_rnn.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_tracking.py --out benchmarks/results

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests benchmarks dags

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
