# Two commands for a fresh clone: `make demo` (train -> test -> predict offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TEACHER_WEIGHTS ?= imagenet

.PHONY: venv demo test clean-demo

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) scripts/demo.py --teacher-weights $(TEACHER_WEIGHTS)

test: venv
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

clean-demo:
	rm -rf demo_output data/demo
