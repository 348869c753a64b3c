# LoRA Studio. The two commands: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: run test lint bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) install --quiet -r requirements-test.txt
	touch $@

## Start the product: web server + one Celery worker (SQLite and an embedded Redis unless configured).
run: $(VENV)/.installed
	$(PY) -m webapp.launcher run

## Run the whole test suite (uses DATABASE_URL / REDIS_URL when set).
test: $(VENV)/.installed-test
	$(PY) -m webapp.launcher test $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed-test
	$(PY) -m lora_engine.bench

clean:
	rm -rf $(VENV) .pytest_cache
