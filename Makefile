# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install demo test lint unit

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

demo: install
	jiriaf demo --duration $${DEMO_DURATION:-180}

lint:
	ruff check src tests bench
	mypy

unit:
	$(PYTHON) -m pytest -m unit -q $(PYTEST_ARGS)

test: install lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)
