# `make demo` runs the app, `make test` passes the tests; each sets itself up on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup setup-browser demo test test-fast bench clean

setup: $(STAMP)

# The browser test drives Debian's Chromium (no browser download from Playwright).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
setup-browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

demo: setup
	$(PY) app.py

test: setup setup-browser
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/inference_latency.py
	$(PY) benchmarks/app_latency.py
	$(PY) benchmarks/load_test.py
	$(PY) benchmarks/gate_cost.py
	$(PY) benchmarks/cold_start.py
	$(PY) benchmarks/parity_anywhere.py

clean:
	rm -rf $(VENV) .pytest_cache
