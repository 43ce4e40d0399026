# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CNNLAB := $(VENV)/bin/cnnlab
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data postgres browser demo test lint bench clean docs

setup: $(STAMP)

# uv installs from PyPI what pip would, its downloads in parallel: torch + torchvision took
# 19 s on a fresh 2-core machine, against about 2 minutes with pip. torch and torchvision
# are PyPI's build (it runs on the CPU too), pinned to the releases the suite passes on:
# raise them together (a local CPU-only torch wheel does not match PyPI's torchvision).
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would
# otherwise compile its imports again (the suite took 840 s instead of about 500).
TORCH := torch==2.14.1 torchvision==0.29.1
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(TORCH)
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST: use what is found; else Debian's package when apt is there; else download.
data: $(STAMP)
	@$(CNNLAB) fetch fashion_mnist --no-download >/dev/null 2>&1 || $(MAKE) --no-print-directory apt-data
	@$(CNNLAB) fetch fashion_mnist

apt-data:
	@if command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq >/dev/null && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	  echo "apt-get could not install dataset-fashion-mnist; trying the download"; \
	fi

# PostgreSQL server binaries for the shared-study test (tests/postgres.py starts a
# throwaway cluster on loopback). Debian's package when they are missing.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && ! command -v pg_ctl >/dev/null; then \
	  echo "installing Debian's postgresql"; \
	  $(SUDO) apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq >/dev/null && $(SUDO) apt-get install -y -qq postgresql >/dev/null); \
	fi

demo: data
	$(CNNLAB) train fashion_fast

# A pytest worker per core and one more, a test file per worker (module fixtures stay
# shared), one thread per process (tests/conftest.py). Many tests wait on processes they
# start (the CLI, sweep workers, torchrun), and the extra worker fills those gaps: on a
# 2-core EPYC the suite took 436-514 s with 3 workers (three runs), 481-572 s with 2 (six
# runs; the host's speed varies) and 545 s with 4; since the CLI's processes start with
# their imports done (tests/cli_process.py), 312 s with 3.
# The 15 slowest tests are listed at the end. Where PYTHONDONTWRITEBYTECODE is set, every
# process the tests start (torchrun ranks, sweep workers) would compile cnnlab's modules
# again: compiled once first (0.2 s), a short `cnnlab train` took 0.3 s less CPU time.
WORKERS := $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
test: docs data browser postgres
	$(PY) -m compileall -q -j 0 cnnlab benchmarks >/dev/null
	$(VENV)/bin/pytest -q -n $(WORKERS) --dist loadfile --durations=15

# Headless Chromium for the report's browser test (tests/test_report.py) and readme-images:
# Debian's package, driven by Playwright from the dev extra (never `playwright install`).
browser:
	@[ -x /usr/bin/chromium ] || { echo "installing Debian's chromium"; \
	  $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq >/dev/null && $(SUDO) apt-get install -y -qq chromium >/dev/null); }

# The README's pictures (docs/images/) from RUN=runs/<run>, or else from a 3-epoch demo run
# trained here: make readme-images [RUN=runs/<run>]
.PHONY: readme-images
readme-images: browser $(if $(RUN),$(STAMP),data)
	$(PY) -m docs.readme_images $(RUN)

# The documentation site (mkdocs.yml) into site/: --strict, so a broken link or anchor, or a
# reference page that cannot be generated from the code, fails the build (and `make test`).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict --quiet

# ruff, then the layers contract in pyproject.toml: no module imports a layer above its own,
# and no circle of imports anywhere in the package (import-linter)
lint: $(STAMP)
	$(VENV)/bin/ruff format --check cnnlab tests benchmarks docs examples
	$(VENV)/bin/ruff check cnnlab tests benchmarks docs examples
	$(VENV)/bin/lint-imports

bench: data
	PYTHONPATH=. $(PY) benchmarks/throughput.py
	$(PY) benchmarks/time_to_accuracy.py
	$(PY) benchmarks/sweep_efficiency.py
	$(PY) benchmarks/sweep_report_scale.py
	PYTHONPATH=. $(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) runs .pytest_cache
