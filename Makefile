# speakstream: `make serve` runs the server on the bundled voice, `make test` runs the tests.
# Both create .venv and install the project into it when needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
comma := ,
# playback = PyAudio for speakstream-say; it compiles against PortAudio's headers
# (Debian: portaudio19-dev, which .ci/run installs).
EXTRAS ?= test,playback
# Named after the extras, so installing another set is never mistaken for done.
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))-stamp
# make serve needs no sound stack: unless the full install is there, it installs only
# these extras, so it works on a fresh machine without PortAudio's headers.
SERVE_EXTRAS ?= test
SERVE_STAMP := $(VENV)/.installed-$(subst $(comma),-,$(SERVE_EXTRAS))-stamp
ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
NODE_DIR := clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.package-lock.json

SOURCES := pyproject.toml setup.py $(wildcard protos/speakstream/v1/*.proto) \
	$(wildcard fastaudio/*.pyx fastaudio/*.pxd fastaudio/*.pxi fastaudio/*.h)

.PHONY: install serve test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# System packages (compiler, PortAudio headers, Node.js): installed with apt-get
# when missing and run as root, else named.
.PHONY: system-deps
system-deps:
	@bash .ci/system-deps

# Editable install: builds the gRPC stubs and the fastaudio extension in place.
$(STAMP): $(PY) $(SOURCES) | system-deps
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

ifneq ($(SERVE_STAMP),$(STAMP))
$(SERVE_STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[$(SERVE_EXTRAS)]"
	touch $@
endif

install: $(STAMP)

serve: $(if $(wildcard $(STAMP)),$(STAMP),$(SERVE_STAMP))
	$(VENV)/bin/speakstream-server $(ARGS)

test: $(STAMP) $(NODE_STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The lint and type gate (pyproject.toml: [tool.ruff], [tool.mypy]); make test runs it first.
.PHONY: lint
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The Node client's pinned packages and buf (clients/node/package-lock.json),
# for tests/test_node_client.py and tests/test_contract.py.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json | system-deps
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

.PHONY: node-install
node-install: $(NODE_STAMP)

.PHONY: proto-baseline
# At a release only: records protos/ as released, the baseline of `buf breaking`
# in tests/test_contract.py (docs/API.md, Evolving the contract).
proto-baseline: $(NODE_STAMP)
	$(NODE_DIR)/node_modules/.bin/buf build protos --exclude-source-info -o protos/released.binpb

clean:
	rm -rf build dist *.egg-info $(VENV) fastaudio/*.so fastaudio/_fastaudio.c $(NODE_DIR)/node_modules
	find protos -name '*_pb2*.py*' -delete

.PHONY: soak fuzz
# Full-size reliability runs (CI runs both at a reduced size as part of make test).
SOAK_N ?= 10000
FUZZ_EXAMPLES ?= 2000
soak: $(STAMP)
	SOAK_N=$(SOAK_N) $(PY) -m pytest -q -s -p no:cacheprovider tests/test_soak.py $(PYTEST_ARGS)

fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider --hypothesis-show-statistics \
		tests/test_fuzz.py $(PYTEST_ARGS)

.PHONY: bench
# Starts its own server; BENCH_ARGS="--target host:port" measures a running one.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)
