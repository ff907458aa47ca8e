# Developer shortcuts; CI runs `bash .ci/run` (= scripts/test.sh).
VENV ?= .venv
.PHONY: install test test-fast lint format quickstart bench
install:
	bash scripts/install.sh dev
test:
	bash scripts/test.sh
test-fast:
	$(VENV)/bin/python -m pytest -m "not slow and not gpu" -q
lint:
	$(VENV)/bin/ruff check gapinit_ray tests benchmarks
	$(VENV)/bin/ruff format --check gapinit_ray tests benchmarks
format:
	$(VENV)/bin/ruff check --fix gapinit_ray tests benchmarks
	$(VENV)/bin/ruff format gapinit_ray tests benchmarks
quickstart:
	bash scripts/quickstart.sh
bench:
	$(VENV)/bin/python -m benchmarks.run_all
