# Every target installs what it needs first (scripts/setup_env.sh is a no-op when up to date).
VENV ?= .venv
PY := $(VENV)/bin/python
export ROS_LOG_DIR ?= $(CURDIR)/.ros_log
export AMENT_PREFIX_PATH := $(abspath $(VENV))

.PHONY: setup test test-fast test-isa lint demo bench clean

setup:
	@scripts/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check .

# Everything (what CI runs), one test file per worker at a time on up to 4 cores (TEST_WORKERS=0:
# one process). test-fast: the tests that train nothing and start no node (< 1 min).
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-fast: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m 'not slow'

# The learning tests again under every other CPU kernel path this machine can force (what
# another user's CPU would run), with each assertion's worst case against its bound.
test-isa: setup
	$(PY) scripts/learning_spread.py

demo: setup
	$(PY) -m posenet_ros.cli demo

bench: setup
	$(PY) scripts/bench.py

clean:
	rm -rf build install log .ros_log .pytest_cache
