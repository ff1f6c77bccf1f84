# speakstream: `make serve` runs the server on the bundled voice, `make test` runs the tests.
# Both create .venv and install the project into it when needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= test
ARGS ?=
PYTEST_ARGS ?=

SOURCES := pyproject.toml setup.py $(wildcard protos/speakstream/v1/*.proto) \
	$(wildcard fastaudio/*.pyx fastaudio/*.pxd fastaudio/*.pxi fastaudio/*.h)

.PHONY: install serve test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Editable install: builds the gRPC stubs and the fastaudio extension in place.
$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/speakstream-server $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info $(VENV) fastaudio/*.so fastaudio/_fastaudio.c
	find protos -name '*_pb2*.py*' -delete

.PHONY: bench
bench: $(STAMP)
	$(PY) -m clients.bench_fastaudio
