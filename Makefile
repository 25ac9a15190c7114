# One entry point for developers and CI alike: `make check` (lint, types, tests) is what .ci/run runs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: all bootstrap test test-unit fuzz check lint types fmt demo clean deb

all: check

bootstrap:
	@scripts/bootstrap

demo:
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo builds network namespaces: run it as root (sudo make demo)" >&2; exit 2; fi
	@scripts/bootstrap
	$(PY) -m lab demo

# Unit tests on every core, the namespace tests two at a time, the lab and its scenarios alone (scripts/test says why).
test: bootstrap
	VENV=$(VENV) scripts/test $(PYTEST_ARGS)

test-unit: bootstrap
	$(PY) -m pytest -m "not netns and not scenario" -n $${TEST_JOBS:-auto} $(PYTEST_ARGS)

# The fuzz tests (tests/fuzz) run in `make test` too, a few seconds' worth; this runs FUZZ_FACTOR times
# as many random examples, and keeps what fails in .hypothesis/ to try first next time.
FUZZ_FACTOR ?= 50
fuzz: bootstrap
	HYPOTHESIS_PROFILE=fuzz FUZZ_FACTOR=$(FUZZ_FACTOR) $(PY) -m pytest tests/fuzz -q $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check failoverd tests lab bench scripts/manpages
	$(VENV)/bin/ruff format --check failoverd tests lab bench scripts/manpages

types: bootstrap
	$(VENV)/bin/mypy failoverd lab bench tests/test_shell.py scripts/manpages

check: lint types test

# build/deb/failoverd_<version>_<arch>.deb, linted (scripts/deb says how; README, "Run it on a gateway").
deb: bootstrap
	VENV=$(VENV) scripts/deb $(DEB_ARGS)

fmt: bootstrap
	$(VENV)/bin/ruff format failoverd tests lab bench
	$(VENV)/bin/ruff check --fix failoverd tests lab bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
