# Two commands for a fresh clone: `make demo` (train -> test -> predict offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TEACHER_WEIGHTS ?= imagenet

.PHONY: venv demo test browser clean-demo

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

# The headless Chromium the report tests open pages in (Debian's packages; needs root or sudo). Without it those
# tests skip, saying why.
browser:
	@command -v chromedriver >/dev/null && command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver; }

clean-demo:
	rm -rf demo_output data/demo
