# The two commands (see README):
#   make serve   -- set up .venv and start the server on its default models
#   make test    -- set up .venv and run the whole test suite (what CI runs via .ci/run)
PY ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps serve test bench-transport clean

# Debian programs the tests use: chromium (browser client test), espeak-ng + flite (wakeword training
# and evaluation), sox, ffmpeg (M4A/WebM uploads), nginx (the balancer test; the tests run their own). Installed when missing and we are root; otherwise those
# tests skip with a reason.
SYSTEM_DEPS = chromium espeak-ng flite sox ffmpeg nginx
system-deps:
	@missing=""; for p in chromium espeak-ng flite sox ffmpeg nginx; do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; (apt-get install -y -q $(SYSTEM_DEPS) >/dev/null 2>&1 || \
	      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(SYSTEM_DEPS) >/dev/null 2>&1)) || \
	      echo "could not install$$missing: the tests that need them will skip"; \
	  else echo "missing$$missing (not root): the tests that need them will skip"; fi; fi

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	# torch only for export/reference tests; 2.13.0 is the CPU wheel these machines carry (no CUDA download)
	$(VENV)/bin/python -m pip install -q torch==2.13.0 || echo "torch 2.13.0 not available: torch tests will skip"
	$(VENV)/bin/python -m pip install -q -e '.[dev,bench,export]'
	# Kokoro's voices (wakeword training/evaluation) are in the npm package kokoro-js: unpacked into the cache
	$(VENV)/bin/voxserve-wakeword fetch-voices >/dev/null || echo "npm could not fetch kokoro-js: the Kokoro tests will skip"
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(VENV)/bin/voxserve serve --host $(HOST) --port $(PORT) --log-format text

# pytest exit 5 means "no tests collected": for this project that is always a broken checkout, so fail.
test: setup system-deps
	@$(VENV)/bin/python -m pytest -q -ra tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as failure"; exit 1; fi; exit $$rc

bench-transport: setup
	$(VENV)/bin/python bench/transport.py --streams 200 --seconds 30

clean:
	rm -rf $(VENV) build dist *.egg-info
