# modelyard: two commands.
#   make run    set up .venv, assemble the embedded default model, start the gateway
#   make test   set up .venv and run the whole test suite
# Both are idempotent: the install step runs again only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The web console's browser libraries (Chart.js, js-yaml) come from npm, pinned by the lock file.
UI_DIR   := src/modelyard/server/ui
UI_STAMP := $(UI_DIR)/node_modules/.installed

# llama-cpp-python builds from source; do not tune the build to this CPU, so it runs elsewhere.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BLAS=OFF
# Nothing is fetched from a model hub at run time.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	# torch is pinned to the CPU build first, so nothing pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[local,test]'
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
	$(BIN)/python -m pytest -q

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

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
