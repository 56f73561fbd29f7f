# Front door. `make build` compiles the native core in place (simdjson from pysimdjson).
PYTHON ?= python3

.PHONY: install build debug test bench bench-store bench-http lint annotate clean

install:
	$(PYTHON) -m pip install -e '.[test]'

build:
	$(PYTHON) setup.py build_ext --inplace

debug:
	ADJOBS_DEBUG=1 $(PYTHON) setup.py build_ext --inplace --force

test:
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) -m bench.ingest --json

bench-store:
	$(PYTHON) -m bench.store --json

bench-http:
	$(PYTHON) -m bench.http --json

lint:
	$(PYTHON) -m ruff check src tests bench
	cython-lint src/adjobs/*.pyx src/adjobs/*.pxd

annotate:
	$(PYTHON) -m cython -a -3 --cplus -I ext src/adjobs/_core.pyx -o build/_core_annotated.cpp

clean:
	rm -rf build dist src/*.egg-info src/adjobs/_core.cpp src/adjobs/_core.html src/adjobs/_normaliser.c src/adjobs/_grouping.c src/adjobs/_jsontext.c src/adjobs/_jsontext.cpp src/adjobs/*.so
