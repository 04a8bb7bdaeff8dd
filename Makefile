# Parley: `make run` starts everything (`make dev`: with DEBUG on); `make test` runs the test suite.
# All set themselves up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Runtime (requirements/base.txt) and development (requirements/dev.txt, a superset) locks, with hashes.
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
PIP_INSTALL := $(BIN)/python -m pip install --require-hashes
# `make lock` recompiles the locks; keeps existing pins unless LOCK_ARGS=--upgrade (or --upgrade-package NAME).
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS)
export PATH := $(BIN):$(PATH)

.PHONY: install install-dev run dev test lint bench screenshot lock

# Where `make run` serves: `make run HOST=0.0.0.0 PORT=8080`, or PARLEY_HOST / PARLEY_PORT in the
# environment (default 127.0.0.1:8000; the Procfile's web line reads them). Only HOST and PORT given
# on the command line count: honcho and many hosts set PORT in the environment for other purposes.
ifeq ($(origin HOST),command line)
export PARLEY_HOST := $(HOST)
endif
ifeq ($(origin PORT),command line)
export PARLEY_PORT := $(PORT)
endif

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# llama.cpp is compiled for this CPU (-march=native) but without AMX: some virtual machines (seen on
# Firecracker guests) list AMX in cpuid without enabling its tile state, and ggml's AMX kernels then die on
# their first `ldtilecfg` (general protection fault: SIGSEGV on any prompt longer than one token). The
# AVX-512/AVX2 kernels are unaffected. A wheel cached before this flag existed must be removed once:
# `.venv/bin/pip cache remove llama_cpp_python`.
ifeq ($(shell uname -m),x86_64)
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif

# The pinned pip first: it reuses the cached llama-cpp-python wheel in hash-checking mode (requirements/pip.in).
# llama-cpp-python compiles llama.cpp once (~11 min on 2 cores); pip caches the wheel after that.
$(BASE_STAMP): requirements/pip.txt requirements/base.txt | $(BIN)/python
	$(PIP_INSTALL) --quiet -r requirements/pip.txt
	CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP_INSTALL) -r requirements/base.txt
	touch $@

# Tests, lint, benchmarks and browser tooling on top of the runtime; re-installed when either lock changes.
# The single sign-on tests run a real OpenID Connect provider on Node.js: its pinned npm packages too.
$(DEV_STAMP): requirements/dev.txt $(BASE_STAMP) tests/oidc/package-lock.json
	$(PIP_INSTALL) -r requirements/dev.txt
	cd tests/oidc && npm ci --no-audit --no-fund
	touch $@

install: $(BASE_STAMP)

install-dev: $(DEV_STAMP)

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

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m core.launcher run -- sh -c '\
		DJANGO_SETTINGS_MODULE=config.settings.test python manage.py makemigrations --check --dry-run && \
		python -m pytest $(PYTEST_ARGS)'

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install-dev
	$(BIN)/python -m core.launcher run -- sh -c '\
		python bench/stream.py && python bench/remote.py && python bench/cache.py && python bench/attacks.py && \
		python bench/gateway.py && python bench/routing.py && python bench/mcp_latency.py && python bench/load.py'

# docs/screenshot.png: the chat page with a short conversation, via Playwright and /usr/bin/chromium.
screenshot: install-dev
	$(BIN)/python -m core.launcher run -- python scripts/screenshot.py

# Recompile the locks after editing requirements/*.in (pip.txt, then base.txt, then dev.txt on top of it).
lock: install-dev
	$(PIP_COMPILE) --output-file requirements/pip.txt requirements/pip.in
	$(PIP_COMPILE) --output-file requirements/base.txt requirements/base.in
	$(PIP_COMPILE) --output-file requirements/dev.txt requirements/dev.in
