# flashstock: `make demo` runs a flash sale, `make test` runs the tests.
# Each target sets up what it needs first (scripts/setup.sh).
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo lint test test-fast test-slow bench bench-cluster gen sync-client package-check clean

setup:
	@VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(BIN)/flashstock demo

# ruff check, ruff format --check, mypy (strict for client/ and lockmgr/): scripts/lint.sh.
lint: setup
	BIN=$(BIN) bash scripts/lint.sh

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	$(BIN)/flashstock bench

# Failover time, 1 vs 3 nodes, etcd writes (~5 min; see benchmarks/README.md).
bench-cluster: setup
	$(BIN)/flashstock bench-cluster

# Regenerate the stubs after editing protos/ (pip install -e does it too).
gen: setup
	$(BIN)/python scripts/gen_protos.py

# Regenerate client/_sync.py after editing client/_async.py.
sync-client:
	python3 scripts/unasync.py

# Build sdist and wheel as a user would, install the client-only wheel in a
# fresh venv, import it, mypy --strict a typed caller, try the CLI (~4 min).
package-check:
	bash scripts/check_package.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache
	find protos -name '*_pb2*.py*' -delete
