# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   -> virtual env + requirements, synthetic fan data, train, evaluate
#   make test   -> virtual env + requirements + test tools, every test (slow ones too)
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The real YAMNet weights: $FANWATCH_YAMNET, else models/yamnet.tflite, else ../shared/yamnet beside the clone.
FANWATCH_YAMNET ?= $(firstword $(wildcard models/yamnet.tflite ../shared/yamnet/yamnet.tflite))
export FANWATCH_YAMNET

.PHONY: setup demo test test-fast bench lint format-check format clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
	@# sounddevice needs PortAudio (Debian: libportaudio2), the MQTT tests a real broker (mosquitto) and
	@# openssl; installed here when we may.
	@{ $(PY) -c "import sounddevice" 2>/dev/null && test -x /usr/sbin/mosquitto && command -v openssl >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq libportaudio2 mosquitto openssl) >/dev/null; \
	  else echo "note: sudo apt-get install libportaudio2 (live capture) mosquitto openssl (MQTT tests)"; fi; }
	@# the status page's browser test uses Debian's headless chromium
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null; \
	  else echo "note: the status page test needs chromium: sudo apt-get install chromium"; fi; }

demo: setup
	$(PY) train.py --demo
	$(PY) evaluate_model.py
	$(PY) visualize_data.py --data data/demo

test: setup
	$(PY) -m pytest -m "slow or not slow" -q

test-fast: setup
	$(PY) -m pytest -q

bench: setup
	@test -f artifacts/sound_classifier.tflite || $(PY) train.py --demo
	$(PY) -m bench.embeddings
	$(PY) -m bench.latency
	$(PY) -m bench.anomaly_methods
	$(PY) -m bench.stream
	$(PY) -m bench.web
	$(PY) -m bench.alerts
	$(PY) -m bench.alerts_real

# ruff (configured in pyproject.toml: lint rules and format) and hadolint; LINT_FORMAT=0 skips the format
# check (`make format` rewrites the tree).
LINT_FORMAT ?= 1
lint: setup
	$(VENV)/bin/ruff check .
	@if [ "$(LINT_FORMAT)" = 1 ]; then $(MAKE) --no-print-directory format-check; \
	 else echo "ruff format --check: skipped (LINT_FORMAT=0)"; fi
	$(VENV)/bin/hadolint Dockerfile

format-check: setup
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) artifacts/cache
