# One-command entry points. `make demo` and `make test` set up the environment first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
DEBIAN_PACKAGES := espeak-ng

.PHONY: setup setup-gpu demo downstream test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@for pkg in $(DEBIAN_PACKAGES); do \
	  if ! command -v $$pkg >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing Debian package $$pkg"; \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null) \
	        || echo "warning: could not install $$pkg; the speech corpus (data.synth.speech) needs it"; \
	    else \
	      echo "note: install the Debian package $$pkg (sudo apt-get install $$pkg) for the speech corpus; going on without it"; \
	    fi; \
	  fi; \
	done
	@touch $(STAMP)

# FAISS's GPU build replaces the CPU one (both provide the `faiss` module).
setup-gpu: setup
	$(PY) -m pip uninstall --quiet -y faiss-cpu
	$(PY) -m pip install --quiet -e '.[gpu]'

DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_QUERY := a large red circle moving left

demo: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
	  pretrain.py output_dir=$(DEMO_RUN)
	$(PY) -m eval.search --index $(DEMO_RUN)/index "$(DEMO_QUERY)" -k 5 --sheet $(DEMO_RUN)/query.png

# The shapes and speech suites of the downstream harness on the newest demo export (or DEMO_EXPORT=...).
DEMO_EXPORT ?= $(lastword $(sort $(wildcard runs/demo-*/export)))

downstream: $(STAMP)
	@test -n "$(DEMO_EXPORT)" || { echo "no runs/demo-*/export: run make demo first, or pass DEMO_EXPORT=RUN/export"; exit 1; }
	$(PY) -m eval.downstream --export $(DEMO_EXPORT) --suite shapes --suite speech --out $(dir $(DEMO_EXPORT))downstream

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
