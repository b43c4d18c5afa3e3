# Each target sets up its own virtual environment, so a fresh clone needs nothing else.
# TORCH is installed before the package: the default pin matches the CPU wheel kept on
# this project's build machines; elsewhere pip takes the same release from PyPI.
# Override it for another build, e.g. `make test TORCH='torch>=2.4'`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

demo: $(STAMP)
	$(VENV)/bin/sealign demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
