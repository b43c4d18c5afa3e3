# Each target sets up its own virtual environment, so a fresh clone needs nothing else.
# TORCH is installed with the package: the default pin matches the CPU wheel kept on
# this project's build machines; elsewhere the same release comes from PyPI.
# Override it for another build, e.g. `make test TORCH='torch>=2.4'`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install browser clean

demo: $(STAMP)
	$(VENV)/bin/sealign demo

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q

# The labelling page is tested in a real headless browser: Debian's chromium, driven through
# chromium-driver by Selenium (a test extra). Installed once; elsewhere those tests are skipped.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver (browser tests)"; \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "could not install chromium: the browser tests will be skipped"; }

install: $(STAMP)

# uv installs in seconds what pip takes a minute for; pip stays the fallback where uv does not
# install. uv reads no pip config, so the folder pip finds local wheels in (the CPU torch here) is
# handed to it, and asked to compile bytecode as pip does (where PYTHONDONTWRITEBYTECODE is set, every
# process would otherwise compile transformers anew: 8.5 s to import it instead of 3.7 s).
# Installers' own chatter is not ours to print: one line per step instead.
FIND_LINKS := $(addprefix --find-links ,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))

$(STAMP): pyproject.toml
	@echo "creating the virtual environment $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "installing $(TORCH), sealign and its test tools"
	@if $(VENV)/bin/pip install -qq uv; then \
	  $(VENV)/bin/uv pip install -q --compile-bytecode --python $(VENV)/bin/python $(FIND_LINKS) "$(TORCH)" -e ".[test]"; \
	else \
	  $(VENV)/bin/pip install -qq "$(TORCH)" && $(VENV)/bin/pip install -qq -e ".[test]"; \
	fi
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info
