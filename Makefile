# tagrecall: `make demo` runs the pipeline on synthetic data, `make test` runs the tests.
# Both set up what they need first (a virtualenv in .venv, Java 17+ for Spark).

PYTHON ?= python3
comma  := ,
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test,delta,bench,model,airflow,docs
# Every resolved version (Linux x86_64, Python 3.11), installed by `make setup`; `make lock`
# refreshes it from setup.cfg's ranges. `make setup LOCK=` installs from the ranges instead.
LOCK   ?= requirements.lock

.PHONY: setup java redis demo test faults faults-quick lint lock bench dist env-archive airflow docs clean

# Then Delta Lake's jars (`tagrecall delta-jars`: resolved from Maven Central once, about
# 30 s, into the virtualenv; a no-op while they are there; every later session, test and
# spark-submit uses them offline), and the driver JVM's class archive (`tagrecall
# class-archive`: about two minutes once, a no-op while it is current; each driver started
# later is some 5-12 s faster with it).
setup: java $(VENV)/.installed
	@$(BIN)/tagrecall delta-jars || \
		echo "warning: Delta Lake's jars could not be fetched (see above): --format delta and its tests fail until \`tagrecall delta-jars\` succeeds"
	@$(BIN)/tagrecall class-archive >/dev/null || \
		echo "warning: the JVM class archive was not recorded (see above); Spark starts without it"

$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tagrecall needs Python 3.11+, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(LOCK),$(BIN)/pip install --quiet -r $(LOCK))
	$(BIN)/pip install --quiet $(if $(LOCK),--no-deps) -e ".[$(EXTRAS)]"
	@touch $@

# Re-resolve every dependency within setup.cfg's ranges and pin the result.
lock:
	$(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet uv
	.lock-venv/bin/uv pip compile setup.cfg $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock
	rm -rf .lock-venv

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

# The publish tests start their own redis-server on a loopback port (openssl makes the
# certificate of the TLS test).
redis:
	@if command -v redis-server >/dev/null && command -v openssl >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "redis-server or openssl not found; installing them with apt (the publish tests start a redis-server)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server openssl; \
		systemctl disable --now redis-server >/dev/null 2>&1 || true; \
	else \
		echo "redis-server not found: the publish tests will be skipped."; \
		echo "Install it, e.g. 'sudo apt-get install redis-server' or 'brew install redis'."; \
	fi

demo: setup
	$(BIN)/tagrecall demo

# Two pytest-xdist workers (TEST_WORKERS=0 runs the suite in one process); tests/conftest.py
# keeps the tests that share a costly fixture on one worker. The 15 slowest tests and
# fixtures are listed at the end: where the suite's time goes.
TEST_WORKERS ?= 2
test: setup redis
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

# The fault campaign (bench/faults.py): SIGKILL of drivers, executors (on a standalone
# cluster it starts) and redis-server at random moments, re-run, compare; ends with one
# summary line. 302 faults by default (about 100 minutes on 2 cores); FAULTS_ARGS=--quick
# for one of each kind a step.
faults: setup redis
	$(BIN)/python bench/faults.py $(FAULTS_ARGS)

# The quick campaign of every step, as tests (tests/test_faults.py, marked campaign: one
# SIGKILL per step on Parquet, and on Delta for ingest, triples and export; about 16
# minutes on 2 cores). `make test` kills ingest and profiles only.
faults-quick: setup redis
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m campaign tests/test_faults.py

# The documentation site (docs/, mkdocs.yml) on http://127.0.0.1:8000, rebuilt on every
# change; its reference pages are generated from the code at each build (docs/hooks/).
# The test suite builds it with --strict (tests/test_docs.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/profiles.py --no-final-full --compare-plain
	$(BIN)/python bench/train.py
	$(BIN)/python bench/publish.py
	$(BIN)/python bench/export.py

# The project's pure-Python code as one zip for spark-submit --py-files.
dist: setup
	@mkdir -p dist
	rm -f dist/tagrecall.zip
	$(BIN)/python -m zipfile -c dist/tagrecall.zip jobs models schemas
	@echo "dist/tagrecall.zip"

# Airflow (standalone: scheduler, API server and UI on http://localhost:8080, SQLite) with
# tagrecall's DAGs, a local Spark connection and the warehouse in airflow-data/. Local use
# only: every visitor of the UI is an admin.
AIRFLOW_HOME ?= $(CURDIR)/airflow-home
airflow: setup dist
	@mkdir -p $(AIRFLOW_HOME) airflow-data
	AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True \
	AIRFLOW_CONN_TAGRECALL_SPARK='{"conn_type": "spark", "host": "local[*]"}' \
	PATH=$(CURDIR)/$(BIN):$$PATH PYSPARK_PYTHON=$(CURDIR)/$(BIN)/python \
	$(BIN)/airflow standalone

# A packed virtualenv for Spark executors that need tagrecall's dependencies (TensorFlow for
# export's scoring): `spark-submit --archives dist/tagrecall-env.tar.gz#environment --conf
# spark.pyspark.python=./environment/bin/python ...` (the DAG does this with TAGRECALL_ARCHIVES).
# venv-pack refuses editable installs, so the archive is a fresh virtualenv from the lock file.
env-archive:
	@mkdir -p dist
	rm -rf dist/env && $(PYTHON) -m venv dist/env
	dist/env/bin/pip install --quiet -r $(LOCK) venv-pack
	dist/env/bin/pip install --quiet --no-deps .
	dist/env/bin/venv-pack -p dist/env -o dist/tagrecall-env.tar.gz --force
	rm -rf dist/env
	@echo "dist/tagrecall-env.tar.gz"

clean:
	rm -rf $(VENV) dist build site demo airflow-home airflow-data *.egg-info .pytest_cache
