# tagrecall: `make demo` runs the pipeline on synthetic data, `make test` runs the tests.
# Both set up what they need first (a virtualenv in .venv, Java 17+ for Spark).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test,delta,bench,model

.PHONY: setup java redis demo test lint bench dist clean

setup: java $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tagrecall needs Python 3.11+, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

# Spark 4 needs Java 17 or newer.
java:
	@major=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1); \
	if [ -n "$$major" ] && [ "$$major" -ge 17 ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "Java 17+ not found (found: $${major:-none}); installing openjdk-17-jre-headless with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; \
	else \
		echo "tagrecall needs Java 17 or newer for Spark (found: $${major:-none})."; \
		echo "Install it, e.g. 'sudo apt-get install openjdk-17-jre-headless' (Debian/Ubuntu)"; \
		echo "or 'brew install openjdk@17' (macOS), then re-run make."; \
		exit 1; \
	fi

# The publish tests start their own redis-server on a loopback port.
redis:
	@if command -v redis-server >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "redis-server not found; installing Debian's redis-server with apt (the publish tests start one)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
		systemctl disable --now redis-server >/dev/null 2>&1 || true; \
	else \
		echo "redis-server not found: the publish tests will be skipped."; \
		echo "Install it, e.g. 'sudo apt-get install redis-server' or 'brew install redis'."; \
	fi

demo: setup
	$(BIN)/tagrecall demo

test: setup redis
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/profiles.py --no-final-full
	$(BIN)/python bench/train.py

# The project's pure-Python code as one zip for spark-submit --py-files.
dist: setup
	@mkdir -p dist
	rm -f dist/tagrecall.zip
	$(BIN)/python -m zipfile -c dist/tagrecall.zip jobs models schemas
	@echo "dist/tagrecall.zip"

clean:
	rm -rf $(VENV) dist build demo *.egg-info .pytest_cache
