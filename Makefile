# Two commands on a fresh machine: `make run` (set up, fetch ML-100K, run the flow) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA := data/ml-100k/ml-100k.inter
# Metaflow needs a user name; CI machines may not set one.
export USERNAME ?= $(or $(USER),movierec)
export PYTHONUNBUFFERED := 1

.PHONY: setup data run test test-fast lint lock audit bench-setup clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# Every package (pip and setuptools included) comes from the hash-pinned lock; movierec itself is
# installed from this checkout without an isolated build, so no unpinned build tool is fetched.
$(STAMP): requirements.txt setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --require-hashes -r requirements.txt
	@# pip byte-compiles on one core; here every core does it. Bytecode must exist before the first import:
	@# with PYTHONDONTWRITEBYTECODE set (as on our CI machines) nothing compiled on import is kept, and every
	@# process, each Ray worker included, would compile torch again. Files that fail to compile (templates
	@# some packages ship) are skipped, as pip skips them.
	$(BIN)/python -c "import compileall, sys, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP)  ## create .venv with the pinned dependencies and movierec

$(DATA): | $(STAMP)
	$(BIN)/python -m movierec.data fetch

data: $(DATA)  ## download MovieLens 100K (from the recbole wheel on PyPI) into data/ml-100k

run: setup data  ## train, evaluate and publish on ML-100K (extra flow options: make run ARGS="--protocol temporal")
	$(BIN)/python flows/recommender_flow.py --no-pylint run $(ARGS)

# pytest-xdist workers: the tests of the shared flow runs go to one (tests/conftest.py's worker_share), the rest beside them.
TEST_WORKERS ?= 2

test: setup data  ## the whole test suite (the README's test command), in TEST_WORKERS processes
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests $(PYTEST_ARGS)

test-fast: setup data  ## the quick tier, after every change: no flow, Ray, venv, server or worker process, browser or database
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not integration" tests $(PYTEST_ARGS)

lint: setup  ## ruff
	$(BIN)/ruff check movierec flows tests $(wildcard benchmarks)

lock: setup  ## re-pin requirements/runtime.txt and requirements.txt from requirements/*.in (hashes included)
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements/runtime.txt requirements/runtime.in
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.txt requirements/dev.in
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements/peers.txt requirements/peers.in

bench-setup: setup  ## the peers benchmarks/peers.py compares with (cornac, Surprise), into .venv
	$(BIN)/python -m pip install -q --require-hashes -r requirements/peers.txt

audit: setup  ## pip-audit the pinned lock against PyPI's vulnerability data
	$(BIN)/python .ci/audit.py requirements.txt

clean:  ## remove the venv, caches and local Metaflow/Ray runs (keeps downloaded data)
	rm -rf $(VENV) .metaflow .movierec_ray .pytest_cache .ruff_cache build dist *.egg-info
