# HMS Bus Admin. `make run` runs the product; `make test` runs every check. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: run test pytest pytest-orm lint browser stop bench clean

$(RUNTIME): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV): $(RUNTIME) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

## run: web (http://127.0.0.1:8000) and bus worker together, with demo data; Ctrl-C stops both.
run: $(RUNTIME)
	$(PY) manage.py ensure_redis
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_demo $(if $(DEMO_PASSWORD),--password "$(DEMO_PASSWORD)")
	@echo
	@echo "HMS Bus Admin: http://127.0.0.1:$${WEB_PORT:-8000}/  (demo users: policy, policy2, auditor, admin)"
	@echo "Ctrl-C stops the web server and the bus worker."
	@echo
	$(VENV)/bin/honcho start -f Procfile

## stop: stop the Redis that `make run` started under var/ (if it started one).
stop: $(RUNTIME)
	$(PY) manage.py ensure_redis --stop

## test: lint, types, then the whole suite against a real Redis (and Debian's chromium for tests/e2e).
test: lint pytest pytest-orm

# The ORM store is the raw-SQL stores' oracle (busapp/store): the tests of what they serve
# (publishing, the audit chain, history and its check, the worker's tap) pass on it too.
ORACLE_TESTS = tests/test_store.py tests/test_publishing.py tests/test_audit.py tests/test_history_check.py \
	tests/test_history.py tests/test_worker.py
pytest-orm: $(DEV)
	BUS_STORE=orm $(VENV)/bin/pytest -q -p no:cacheprovider $(ORACLE_TESTS)

# The browser tests drive Debian's chromium (Playwright's own browser download is not used).
# As root with apt (CI, a fresh VM) it is installed; elsewhere this says how.
browser:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests (apt)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "the browser tests need chromium: sudo apt-get install chromium"; exit 1; fi

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

# pytest exits 5 when it collects nothing: here that means the suite is broken, so it fails.
# The whole suite runs under coverage and fails below the floor (pyproject.toml, fail_under);
# a chosen part of it (PYTEST_ARGS) is not held to the floor.
pytest: $(DEV) browser
	@$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	if [ -z "$(PYTEST_ARGS)" ]; then $(VENV)/bin/coverage report; fi

## bench: the benchmarks in bench/ (they print their figures and baselines).
bench: $(DEV)
	$(PY) bench/publish.py
	$(PY) bench/forms.py
	$(PY) bench/live.py
	$(PY) bench/api.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
