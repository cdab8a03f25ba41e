# The two set-up commands of README.md: `make demo` (main job) and `make test` (test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/dgmrec: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/dgmrec

/usr/bin/chromium:
	apt-get update -q && apt-get install -y -q chromium chromium-driver

.PHONY: install demo test
install: $(BIN)/dgmrec

demo: $(BIN)/dgmrec
	HF_HUB_OFFLINE=1 $(BIN)/dgmrec demo

test: $(BIN)/dgmrec /usr/bin/chromium
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests
