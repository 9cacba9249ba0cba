# The README's commands. Every target bootstraps .venv once (a stamp file): a re-run with
# nothing to install takes seconds.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# optional extras of pyproject.toml installed with dev, e.g. EXTRAS=app,export (.ci/run);
# each set of extras has its own stamp, so adding one installs it once
EXTRAS ?=
comma := ,
STAMP := $(VENV)/.ovseg-setup-done$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
# CPU/CUDA wheels that pip takes from this machine's disk; a GPU user picks the CUDA build
# (see README), or sets TORCH_SPEC= to keep the torch already in the venv.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# pytest-xdist processes (the CI machine's 2 cores; 0 = one process, no xdist)
PYTEST_WORKERS ?= 2

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup test lint format demo bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml tools/install_detectron2.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install --quiet $(TORCH_SPEC); fi
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --quiet -e ".[dev$(if $(EXTRAS),$(comma)$(EXTRAS))]"
	@touch $(STAMP)

# one intra-op thread per test process: the models are tiny, and on 2 shared cores two
# threads per process made the suite several times slower; two processes, one per core
# (pytest-xdist), halve its wall time there; a worker that is done takes the other's waiting
# tests (worksteal), the end-to-end runs go first (tests/conftest.py)
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(PYTEST_WORKERS) \
		$(if $(filter 0,$(PYTEST_WORKERS)),,--dist worksteal) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# speed benchmarks (tools/README.md), e.g. BENCH_ARGS="train --config-file CONFIG" or "pseudo
# --config-file CONFIG"; the default times the CLIP teacher, which needs no dataset
BENCH_ARGS ?= teacher
bench: setup
	$(PY) tools/benchmark.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)

# The offline world end to end (README): QUICK=1 tiny world for CI, FULL=1 both splits,
# RETRAIN_CLIP=1 retrains the toy CLIP first, STUDENTS=lseg,zegclip runs only those students.
demo: setup
	$(PY) tools/run_demo.py $(if $(QUICK),--quick) $(if $(FULL),--full) $(if $(RETRAIN_CLIP),--retrain-clip) $(if $(STUDENTS),--methods $(STUDENTS)) $(DEMO_ARGS)
