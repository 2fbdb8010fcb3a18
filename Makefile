# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/mesh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/mesh
	$(BIN)/mesh demo

test: $(BIN)/mesh
	$(BIN)/pytest -q

bench: $(BIN)/mesh
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mesh .pytest_cache
