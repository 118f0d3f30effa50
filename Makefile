# The two commands README.md promises on a fresh machine: `make run` and `make test`.
# Both do all set-up first: a virtual environment with the pinned torch, the package
# with its dev extras, and the npm packages when package.json exists.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: run test setup lint format clean bench bench-model bench-data bench-reduce bench-scaling bench-browser bench-closure bench-communication bench-learning screenshots

setup: $(VENV)/.installed $(if $(wildcard package.json),node_modules/.installed mlitb/web/static/vendor/versions.json)

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mlitb needs Python >= 3.11; set PYTHON=python3.11")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The page's vendor files (TF.js, uPlot, ...) are copied from node_modules, never committed.
mlitb/web/static/vendor/versions.json: node_modules/.installed $(VENV)/.installed mlitb/web/build.py
	$(BIN)/python -m mlitb.web.build

# The main job: the master with the data server, the MNIST demo project, a local trainer
# and a tracker; it prints the URLs, then the links once training is under way. State in
# ./data. Phones on the LAN: make run HOST=0.0.0.0 (another port: PORT=8080 make run).
HOST ?= 127.0.0.1
PORT ?= 8000
run: setup
	$(BIN)/mlitb serve --demo --host $(HOST) --port $(PORT)

# Ray (the optional extra for `mlitb fleet`) is only needed by the tests and fleets.
$(VENV)/.ray-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	touch $@

test: setup $(VENV)/.ray-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MLITB_REQUIRE_RAY=1 $(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-model bench-data bench-reduce bench-scaling bench-browser bench-closure bench-communication bench-learning

bench-model: setup
	$(BIN)/python benchmarks/model_bench.py

bench-data: setup
	$(BIN)/python benchmarks/data_bench.py

bench-reduce: setup
	$(BIN)/python benchmarks/reduce_bench.py

bench-scaling: setup
	$(BIN)/python benchmarks/scaling_bench.py

bench-browser: setup
	$(BIN)/python benchmarks/browser_bench.py

bench-closure: setup
	$(BIN)/python benchmarks/closure_bench.py

bench-communication: setup
	$(BIN)/python benchmarks/communication_bench.py

bench-learning: setup
	$(BIN)/python benchmarks/learning_bench.py

# The README's pictures: every dashboard page at phone and laptop size, rendered in Chromium
# from a fresh master with a slice of MNIST and one worker, into docs/screenshots/ (about a
# minute; the pictures are committed, so run it after a visible change to the dashboard).
screenshots: setup
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache *.egg-info
