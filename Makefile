# Parley: `make run` starts everything (`make dev`: with DEBUG on); `make test` runs the test suite.
# All set themselves up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-requirements
export PATH := $(BIN):$(PATH)

.PHONY: install run dev test lint bench screenshot

# Where `make run` serves: `make run HOST=0.0.0.0 PORT=8080`, or PARLEY_HOST / PARLEY_PORT in the
# environment (default 127.0.0.1:8000; the Procfile's web line reads them). Only HOST and PORT given
# on the command line count: honcho and many hosts set PORT in the environment for other purposes.
ifeq ($(origin HOST),command line)
export PARLEY_HOST := $(HOST)
endif
ifeq ($(origin PORT),command line)
export PARLEY_PORT := $(PORT)
endif

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	# llama-cpp-python compiles llama.cpp once (~11 min on 2 cores); pip caches the wheel after that.
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

# Embedded PostgreSQL+pgvector and Valkey start when DATABASE_URL / REDIS_URL are unset.
run: install
	$(BIN)/python -m core.launcher run -- sh -c '\
		python manage.py migrate --noinput && \
		python manage.py ensure_operator && \
		python manage.py finalize_orphans --all && \
		exec honcho start -f Procfile'

# `make run` with DEBUG on (Django's debug pages, static files reloaded): for development only.
dev: export DJANGO_DEBUG = true
dev: run

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m core.launcher run -- sh -c '\
		DJANGO_SETTINGS_MODULE=config.settings.test python manage.py makemigrations --check --dry-run && \
		python -m pytest $(PYTEST_ARGS)'

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m core.launcher run -- sh -c '\
		python bench/stream.py && python bench/remote.py && python bench/cache.py && python bench/attacks.py && \
		python bench/gateway.py'

# docs/screenshot.png: the chat page with a short conversation, via Playwright and /usr/bin/chromium.
screenshot: install
	$(BIN)/python -m core.launcher run -- python scripts/screenshot.py
