# modelyard: two commands.
#   make run    set up .venv, assemble the embedded default model, start the gateway
#   make test   set up .venv and run the whole test suite
# Both are idempotent: the install step runs again only when pyproject.toml or the lock changes.
#
# Every Python dependency is pinned with hashes in requirements.lock (resolved by uv for Linux, CPython
# 3.11-3.13). Set-up installs exactly that file; nothing is resolved on a new machine.
#   make lock        re-resolve after editing pyproject.toml (keeps every pin that still fits)
#   make lock-check  fail when pyproject.toml and the lock disagree (CI runs it)
#   make upgrade     move every pin to the newest release, then run the tests

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UV     := $(BIN)/uv
LOCK   := requirements.lock
# The web console's browser libraries (Chart.js, js-yaml) come from npm, pinned by the lock file.
UI_DIR   := src/modelyard/server/ui
UI_STAMP := $(UI_DIR)/node_modules/.installed

# torch stays out of the lock: 2.13.0 is the CPU build this project is tested with. pip installs it (on
# this kind of machine pip finds that wheel in a local folder; elsewhere it comes from the registry).
TORCH := torch==2.13.0
# The resolver sees the same local CPU wheel, so the lock holds the CPU build's dependencies, not CUDA's.
LOCAL_WHEELS := $(wildcard /opt/wheels)
export UV_CUSTOM_COMPILE_COMMAND := make lock
COMPILE = $(UV) pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
	--generate-hashes --no-emit-package torch $(if $(LOCAL_WHEELS),--find-links $(LOCAL_WHEELS)) --quiet

# llama-cpp-python builds from source; do not tune the build to this CPU, so it runs elsewhere, and leave out
# the multimodal (mtmd) library, which modelyard does not load (a third of the build).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF
# Nothing is fetched from a model hub at run time.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: faults fuzz finetune-demo install run test test-ray bench clean lock lock-check upgrade

$(UV): requirements-uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-uv.lock
	touch $@

$(STAMP): pyproject.toml $(LOCK) $(UV)
	$(UV) pip install --python $(BIN)/python --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet $(TORCH)
	$(UV) pip install --python $(BIN)/python --no-deps -e .
	$(UV) pip check --python $(BIN)/python
	touch $@

$(UI_STAMP): $(UI_DIR)/package.json $(UI_DIR)/package-lock.json
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	cd $(UI_DIR) && npm ci --no-audit --no-fund
	touch $@

install: $(STAMP) $(UI_STAMP)

run: install
	$(BIN)/modelyard catalog pull gemma-3-270m
	$(BIN)/modelyard up

test: install
	# The console's browser tests drive Debian's Chromium (never a downloaded browser).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	# The cache's tests start throw-away redis-servers (Debian's package).
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	# The store's and the multi-gateway tests run against a throw-away PostgreSQL (Debian's package) on 127.0.0.1.
	url="$${MODELYARD_TEST_POSTGRES_URL:-$$(bash .ci/postgres.sh)}"; \
	MODELYARD_TEST_POSTGRES_URL="$$url" $(BIN)/python -m pytest -q -m "not ray"

# The Ray tests (marked `ray`): small multi-node Ray clusters started inside the tests — replicas on a node that is
# killed under load, two gateways on one cluster, batch jobs on Ray Data (about 8-10 minutes on 2 cores; .ci/run
# runs them after `make test`).
test-ray: install
	$(BIN)/python -m pytest -q -m ray

# The fault tests at full length: a 30 s database outage under load (`make test` runs them with 8 s).
faults: install
	MODELYARD_FAULT_OUTAGE_S=30 $(BIN)/python -m pytest -q tests/faults tests/cache/test_redis_restart.py

# The HTTP API fuzzed from its /openapi.json at length (Schemathesis; tests/server/test_fuzz.py): 5 minutes with each
# key, 100 cases an operation a pass (`make test` runs 15 s). A failure names its seed: MODELYARD_FUZZ_SEED=N make fuzz.
fuzz: install
	MODELYARD_FUZZ_S=300 MODELYARD_FUZZ_EXAMPLES=100 $(BIN)/python -m pytest -q -s tests/server/test_fuzz.py

# Fine-tuning's demonstration task at full size (240 conversations, default hyperparameters), timed from create to a
# deployable model, then base against tuned on the held-out test split (bench/finetune_demo.py; about 15-20 minutes).
finetune-demo: install
	$(BIN)/python bench/finetune_demo.py

bench: install
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/local_generation.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/router_decision.py
	$(BIN)/python bench/speculative_ttft.py
	$(BIN)/python bench/routing_quality.py
	$(BIN)/python bench/cache_lookup.py
	$(BIN)/python bench/cache_gateway.py
	$(BIN)/python bench/batch_throughput.py
	$(BIN)/python bench/finetune_train.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

lock: $(UV)
	$(COMPILE) -o $(LOCK)

# Resolving again from the lock keeps every pin that still satisfies pyproject.toml, so any difference in the
# pinned versions means the two disagree. (Hashes are left out of the comparison: a release can gain a wheel.)
lock-check: $(UV)
	tmp=$$(mktemp -d) && cp $(LOCK) $$tmp/lock && $(COMPILE) -o $$tmp/lock && \
	if diff <(grep -E '^[A-Za-z0-9]' $(LOCK)) <(grep -E '^[A-Za-z0-9]' $$tmp/lock); then echo "lock: in step with pyproject.toml"; \
	else echo "lock: requirements.lock disagrees with pyproject.toml (lines above); run 'make lock'" >&2; exit 1; fi

upgrade: $(UV)
	$(COMPILE) --upgrade -o $(LOCK)
	$(MAKE) test
