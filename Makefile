# fasland: `make demo` runs the main job, `make test` the tests; both set themselves up.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export FASLAND_CACHE ?= $(CURDIR)/runs/cache

.PHONY: setup demo test bench figures sysdeps clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "make: $(PY) not found; install Python 3.11 or run 'make PY=python3'"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

# ParaView and Chromium, for the tests that open exports in the real programs (skipped with a reason when absent).
sysdeps:
	@if command -v pvbatch >/dev/null && command -v xvfb-run >/dev/null && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing paraview, xvfb, chromium (Debian)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    paraview python3-paraview xvfb xauth chromium >/dev/null) || echo "sysdeps: apt-get failed; the ParaView/Chromium tests will be skipped"; \
	else echo "sysdeps: not root or no apt-get; the ParaView/Chromium tests will be skipped"; fi

demo: $(STAMP)
	$(BIN)/fasland study --protocol ICM2O --methods erm,sam,gacfas --preset demo64 --out runs/demo

# Two workers, one file each at a time (a file's module fixtures are built once); tests use one torch thread.
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

figures: $(STAMP)
	$(BIN)/fasland study --protocol ICM2O --methods erm,sam,gacfas --preset demo64 --out runs/demo --figures figures

clean:
	rm -rf runs
