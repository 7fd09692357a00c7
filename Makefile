# Two set-up commands a fresh machine needs: `make demo` and `make test`.
# Both bootstrap their own virtualenv in .venv so nothing has to be installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[test,postgres]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m airflow_ascora_provider.demo

test: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	bash scripts/ensure-services.sh
	ASCORA_FULL_BENCH=1 $(BIN)/python -m pytest -q -s tests/bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-output
