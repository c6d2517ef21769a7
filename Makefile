# mailgate: `make run` starts the service, `make test` runs every test. Both install what they need.
SHELL := /bin/bash
HOST ?= 127.0.0.1
PORT ?= 8000
PG_URL ?= postgresql://postgres@127.0.0.1:5432/mailgate
export UV_LINK_MODE ?= copy

.PHONY: uv sync run web worker test test-deps lint test-sqlite test-postgres test-python bench demo sandbox chaos screenshots

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv

# Packages and mailgate are compiled to bytecode here: where PYTHONDONTWRITEBYTECODE is set (as on
# some CI machines), every `mailgate` process would otherwise compile Django and the rest from
# source at each start (2.2 s of CPU for `mailgate --help`, against 0.9 s compiled).
sync: uv
	uv sync --frozen --quiet --compile-bytecode
	uv run --frozen python -m compileall -q mailgate >/dev/null

run: sync
	uv run mailgate run --host $(HOST) --port $(PORT)

demo: sync
	uv run mailgate demo

sandbox: sync
	uv run mailgate sandbox

test-deps: sync
	./scripts/install-test-deps.sh

lint: sync
	uv run ruff check mailgate tests
	uv run ruff format --check mailgate tests
	uv run mypy mailgate

# Test files run side by side, one process per core (pytest-xdist; each process has its own
# database, home folder and test peers): `make test XDIST=` runs them one after another.
XDIST ?= -n auto --dist loadfile

test-sqlite:
	env -u MAILGATE_DATABASE_URL uv run pytest $(XDIST)

test-postgres:
	MAILGATE_DATABASE_URL=$(PG_URL) uv run pytest $(XDIST) -m "not nodb"

# The SQLite suite on another Python, in an environment of its own from the same lock file:
# `make test-python PY=3.13`, or PY=/path/to/python3.13 where uv cannot download an interpreter.
PY ?= 3.12
test-python: test-deps
	env -u MAILGATE_DATABASE_URL UV_PROJECT_ENVIRONMENT=var/venv-$(notdir $(PY)) \
		uv run --frozen --python $(PY) pytest -q

test: test-deps lint
	$(MAKE) test-sqlite
	$(MAKE) test-postgres

# docs/screenshots/*.png: only this target writes them (a plain test run saves its screenshots in
# temporary folders, so it never changes tracked files).
screenshots: test-deps
	env -u MAILGATE_DATABASE_URL MAILGATE_SCREENSHOTS=1 uv run pytest -q \
		tests/e2e/test_console.py tests/e2e/test_sandbox_pages.py tests/e2e/test_newcomer_pages.py

bench: test-deps
	uv run python -m tests.bench.run
	uv run python -m tests.bench.api_cpu
	uv run python -m tests.bench.fetch
	env -u MAILGATE_DATABASE_URL uv run python -m tests.bench.depth

# The fault matrix in full against real processes, printed as a table, then the soak (50,000
# messages through one worker; SOAK=0 skips it). `make test` runs the bounded matrix.
SOAK ?= 50000
chaos: test-deps
	env -u MAILGATE_DATABASE_URL uv run python -m tests.chaos.run --soak $(SOAK)
