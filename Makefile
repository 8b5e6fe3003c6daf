# Trunk8: `make run` starts the whole system, `make test` runs the suite.
# Both build the virtual environment first when pyproject.toml (or a C source) changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install browser run test test-scale lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml services/redirector/trunk8_redirector/_headscan.c \
		services/redirector/trunk8_redirector/_packed.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: install
	$(BIN)/trunk8 up $(ARGS)

# The admin's browser test drives Debian's chromium (Playwright never downloads a browser
# here). Installed when missing and this is a root Debian machine; elsewhere it is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "chromium not installed: the browser test will be skipped"

test: install browser
	$(BIN)/python -m pytest $(ARGS)

# The split deployment on loopback (NATS cluster, service processes, nginx): the topology,
# faults under load, propagation and graceful stop. Also part of `make test`.
SCALE_TESTS := tests/test_topology.py tests/test_faults.py tests/test_propagation.py tests/test_drain.py

test-scale: install
	$(BIN)/python -m pytest -s $(SCALE_TESTS) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services trunk8

bench: install
	$(BIN)/python bench/redirect.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache services/*/*/*.so
