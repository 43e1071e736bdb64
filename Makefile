# Haven: the two commands of the README, and a few helpers.
#   make run    set up (once: Debian packages, .venv with Haven and the pinned `openstack`
#               client the README uses), then run the all-in-one in the foreground
#   make test   set up (once, with test tools), then run every test
STATE_DIR ?= ./.haven
PYTEST_ARGS ?=

.PHONY: run test setup setup-test lint bench-identity clean

run: setup
	.venv/bin/haven all-in-one --state-dir $(STATE_DIR)

# pytest's own exit code is kept in .pytest-exit (make turns every failure into 2),
# so .ci/run can tell "no tests collected" (5) from failures.
test: setup-test
	.venv/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; echo $$rc > .pytest-exit; exit $$rc

setup:
	@appliance/setup.sh run

setup-test:
	@appliance/setup.sh test

lint: setup-test
	.venv/bin/ruff check core ha tests agents
	.venv/bin/mypy

bench-identity: setup-test
	.venv/bin/python tests/bench/identity.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
