# The course's single entry point. `make demo` and `make test` install what they need first.
# `make setup VENV=` installs into the current Python environment instead of .venv (Binder, conda).
# Packages are installed with uv, several times faster than pip: the uv on PATH, else uv installed
# with pip into that environment (pinned in constraints.txt); pip when uv fails, or always with
# `make setup INSTALLER=pip`.
PYTHON ?= python3
VENV   ?= .venv
INSTALLER ?= uv
# PySpark comes as a source distribution only: its wheel is built on the learner's machine, and
# stored rather than compressed it builds in a third of the time (its jars are compressed already).
UV_PYSPARK_BUILD := pyspark:--build-option=--compression=stored
PYTEST_ARGS ?=
# `make test` runs the suite in two pytest-xdist workers, a test file (or notebook) at a time on
# one worker: each worker has its own broker and Spark session, and the tests wait on brokers,
# JVMs and browsers a third of the time. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
ifeq ($(strip $(VENV)),)
  BIN   := $(patsubst %/,%,$(dir $(shell $(PYTHON) -c 'import sys; print(sys.executable)')))
  STAMP := build/.installed
else
  BIN   := $(VENV)/bin
  STAMP := $(VENV)/.installed
endif

.DEFAULT_GOAL := help
.PHONY: help setup jars demo lab test lint clean execute

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info; ok = (3, 11) <= v[:2] <= (3, 13); \
	  print(f"Python {v.major}.{v.minor} found; the course needs Python 3.11 to 3.13" ) if not ok else None; \
	  sys.exit(0 if ok else 1)'
ifneq ($(strip $(VENV)),)
	@echo "==> creating the virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
endif
	@uv=""; \
	if [ "$(INSTALLER)" = uv ]; then \
	  uv="$$(command -v uv)"; \
	  if [ -z "$$uv" ]; then \
	    echo "==> $(BIN)/python -m pip install -c constraints.txt uv"; \
	    $(BIN)/python -m pip install --quiet -c constraints.txt uv && uv="$(BIN)/uv"; \
	  fi; \
	fi; \
	if [ -n "$$uv" ]; then \
	  set --; \
	  "$$uv" pip install --help 2>/dev/null | grep -q -e --config-settings-package && \
	    set -- --config-settings-package $(UV_PYSPARK_BUILD); \
	  echo "==> $$uv pip install --python $(BIN)/python -c constraints.txt -e '.[test,fast]' $$*"; \
	  "$$uv" pip install --python $(BIN)/python -c constraints.txt -e '.[test,fast]' "$$@" && exit 0; \
	  echo "==> uv could not install the dependencies (above); installing them with pip instead"; \
	fi; \
	echo "==> $(BIN)/python -m pip install -c constraints.txt -e '.[test,fast]' (a few minutes)"; \
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel && \
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e '.[test,fast]'
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

setup: $(STAMP) ## virtual environment, pinned dependencies, Kafka and connector jars
	$(BIN)/clickstream setup

demo: setup ## the whole pipeline live: broker, producer, streaming job, dashboard (Ctrl-C stops it)
	$(BIN)/clickstream demo

lab: setup ## JupyterLab on the course notebooks
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

execute: setup ## run the whole course headless with papermill into build/executed
	$(BIN)/clickstream course execute

test: setup ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check lib tests

clean: ## stop the local broker and remove the virtual environment (the jar cache stays)
	-$(BIN)/clickstream broker down
	rm -rf $(VENV)
