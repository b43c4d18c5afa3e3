# Each target sets up its own virtual environment, so a fresh clone needs nothing else.
# TORCH is installed before the package: the default pin matches the CPU wheel kept on
# this project's build machines; elsewhere pip takes the same release from PyPI.
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

# pip's own warnings (-qq keeps its errors) are not ours to print: one line per step instead.
$(STAMP): pyproject.toml
	@echo "creating the virtual environment $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "installing $(TORCH)"
	@$(VENV)/bin/pip install -qq "$(TORCH)"
	@echo "installing sealign and its test tools"
	@$(VENV)/bin/pip install -qq -e ".[test]"
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info
