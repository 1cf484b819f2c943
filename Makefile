# Every target installs what it needs first (scripts/setup_env.sh is a no-op when up to date).
VENV ?= .venv
PY := $(VENV)/bin/python
export ROS_LOG_DIR ?= $(CURDIR)/.ros_log
export AMENT_PREFIX_PATH := $(abspath $(VENV))

.PHONY: setup test lint clean

setup:
	@scripts/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf build install log .ros_log .pytest_cache
