# `make run`: set up .venv (if needed) and run the quickstart experiment.
# `make test`: set up .venv (if needed) and run the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: run test install clean

run: $(STAMP)
	$(PY) -m orchestrator run experiments/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q

install: $(STAMP)

# Reinstall whenever the dependency pins change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
