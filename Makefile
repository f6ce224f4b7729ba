# The whole set-up is `make run` or `make test`: each creates .venv and installs what is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# mistralai 1.x cannot share .venv with the pinned major: it goes into its own directory for the compat test.
MISTRAL1 := $(VENV)/mistralai1
MISTRAL1_STAMP := $(MISTRAL1)/.installed

.PHONY: run test lint bench install browser nginx lock clean

install: $(STAMP) $(MISTRAL1_STAMP)

# torch goes first and exactly: a looser request would pull the CUDA build and gigabytes with it.
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) is required (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(MISTRAL1_STAMP): requirements-mistralai1.lock $(STAMP)
	rm -rf $(MISTRAL1)
	$(BIN)/python -m pip install --quiet --target $(MISTRAL1) -r requirements-mistralai1.lock
	touch $(MISTRAL1_STAMP)

run: $(STAMP)
	$(BIN)/arbiter up

test: $(STAMP) $(MISTRAL1_STAMP) browser nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The console's end-to-end tests drive Debian's Chromium; install it when we can (root on Debian/Ubuntu).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
		echo "chromium is not installed: the browser tests will be skipped"

# `arbiter up --split` (and the end-to-end tests, which run Arbiter that way) put nginx in front of the services.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null); } || \
		echo "nginx is not installed: the split-mode tests will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check libs services tests benchmarks
	$(BIN)/mypy libs services

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# Re-pin after adding a dependency: every installed package at its current version (torch stays exact).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(arbiter|torch)[=@ ]' | sort -f > requirements.lock
	echo "torch==2.13.0" >> requirements.lock

clean:
	rm -rf $(VENV) .arbiter .pytest_cache .mypy_cache .ruff_cache
