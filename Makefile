# mykey: `make demo` and `make test` work from a fresh clone (Python 3.11+, a C
# compiler, and apt-get as root on Debian for liblmdb-dev when it is missing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mykey-installed
EXT    := $(wildcard ext/*.pyx)
SYSDEPS_APT := liblmdb-dev zlib1g-dev libssl-dev

.PHONY: all setup sysdeps build test demo bench bench-check torture clean

all: test

# System headers the Cython extensions compile against.
sysdeps:
	@printf '#include <lmdb.h>\n#include <zlib.h>\n#include <openssl/sha.h>\nint main(void){return 0;}\n' > /tmp/mykey-sysdeps.c; \
	if cc /tmp/mykey-sysdeps.c -llmdb -lz -lcrypto -o /tmp/mykey-sysdeps 2>/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(SYSDEPS_APT) with apt-get"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSDEPS_APT) >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSDEPS_APT) >/dev/null)); \
	fi; \
	if ! cc /tmp/mykey-sysdeps.c -llmdb -lz -lcrypto -o /tmp/mykey-sysdeps 2>/dev/null; then \
	  echo "error: the LMDB, zlib and OpenSSL development files are missing. Install them with:"; \
	  echo "    sudo apt-get install -y $(SYSDEPS_APT)"; \
	  exit 1; \
	fi

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mykey needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=70" wheel "Cython>=3"

$(STAMP): $(BIN)/python pyproject.toml dev/pyproject.toml setup.py | sysdeps
	$(BIN)/python -m pip install -q -e '.[dev,nats]' -e ./dev
	touch $(STAMP)

setup: sysdeps $(STAMP) build

# Rebuild the extensions in place whenever a .pyx changes.
build: $(STAMP)
	@$(BIN)/python setup.py -q build_ext --inplace >/dev/null 2>&1 || $(BIN)/python setup.py build_ext --inplace
	@$(BIN)/python -c 'import mykey.log._framing, mykey.index._lmdb' 2>/dev/null || \
	  { echo "error: the Cython extensions did not build; run: $(BIN)/python setup.py build_ext --inplace"; exit 1; }

# The suite, and each micro-benchmark run once; the benchmark runner gets a smoke test here
# (tests/test_bench_runner.py) and its full end-to-end run in bench-check.
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(BIN)/python -m pytest -q -p no:cacheprovider bench --benchmark-disable

demo: setup
	$(BIN)/mykey demo

bench: setup
	$(BIN)/python -m bench

# The benchmark runner end to end at a tiny size (--quick): every side and peer, checked answers.
bench-check: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider bench/check_runner.py

# The long fault-injection runs (not part of `make test`, which runs a short version of each):
# power cuts, full disks (as root), injected I/O errors, thousands of SIGKILLs and a million
# fuzzed inputs; prints the figures. Fuzzes with atheris when it installs into the venv, else
# with the built-in mutation fuzzer only. TORTURE_ARGS=--scale 0.1 for a shorter run. A stopped
# run goes on with the parts it had not finished (their figures are kept in build/).
torture: setup
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q atheris >/dev/null 2>&1 || \
	  echo "atheris did not install: fuzzing with the built-in mutation fuzzer only"
	@mkdir -p build
	$(BIN)/python -m tests.faults.torture --resume build/torture-state.json $(TORTURE_ARGS)

clean:
	rm -rf build $(VENV) core/*.so core/*/*.so ext/*.c *.egg-info .pytest_cache .hypothesis
