# One-command set-up: `make demo` and `make test` build .venv on first use (idempotent).
# TORCH_SPEC picks the torch build installed before everything else. The default takes the
# CPU wheel where one lies on local disk (as on CI); a GPU user runs e.g.
#   make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" demo
# or installs torch into .venv first (an importable torch is never reinstalled).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install install-test demo test lint notebooks bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/scoresde demo --out runs/demo

lint: install-test
	$(VENV)/bin/ruff check .

# Two workers, one torch thread each (tests/conftest.py), a test file per worker at a time.
test: install-test lint
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

# Re-execute every notebook in place, keeping its outputs (the committed figures). NB_FAST=1
# gives the test suite's small sizes; the default is the full-size run that gets committed.
# NB=01_forward_sdes.ipynb runs one.
NB_FAST ?= 0
NB ?= *.ipynb
notebooks: install-test
	cd notebooks && for nb in $(NB); do \
		echo "executing $$nb"; \
		env -u MPLBACKEND SCORESDE_FAST=$(NB_FAST) PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" \
		$(abspath $(VENV))/bin/jupyter-execute --inplace --kernel_name=python3 --timeout=1800 "$$nb" || exit 1; \
	done

# `make bench` runs the quick benchmark, `make bench FULL=1` the full one; both write
# benchmarks/results/. The peers: k-diffusion and flow_matching installed without their
# dependencies (they would pull another torch), diffusers with its own (no torch among them).
BENCH_ARGS ?=
bench: install
	$(PIP) install --no-deps k-diffusion flow_matching
	$(PIP) install diffusers
	$(PY) benchmarks/run.py $(if $(FULL),--full,) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
