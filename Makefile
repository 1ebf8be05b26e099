# `make demo` runs the app, `make test` passes the tests; each sets itself up on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup setup-browser setup-node web demo test test-fast bench clean

setup: $(STAMP)

# The browser test drives Debian's Chromium (no browser download from Playwright).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
setup-browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# The private mode's page loads ONNX Runtime Web from web/vendor/ (else from a pinned CDN URL):
# npm installs the versions web/package-lock.json pins, and the three files the page needs are copied.
setup-node:
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }

WEB_VENDOR := web/vendor/.built
web: $(WEB_VENDOR)

$(WEB_VENDOR): web/package.json web/package-lock.json | setup-node
	cd web && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p web/vendor
	cp web/node_modules/onnxruntime-web/dist/ort.wasm.bundle.min.mjs \
	   web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm \
	   web/node_modules/dicom-parser/dist/dicomParser.min.js web/vendor/
	touch $@

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

demo: setup web
	$(PY) app.py

test: setup setup-browser web
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup setup-browser web
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/inference_latency.py
	$(PY) benchmarks/app_latency.py
	$(PY) benchmarks/load_test.py
	$(PY) benchmarks/gate_cost.py
	$(PY) benchmarks/cold_start.py
	$(PY) benchmarks/parity_anywhere.py
	$(PY) benchmarks/private_mode.py
	$(PY) benchmarks/quick_run.py

clean:
	rm -rf $(VENV) .pytest_cache web/node_modules web/vendor
