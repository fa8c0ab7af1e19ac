# Shortcuts for people who have make; each target is one documented command.
.PHONY: run test engine lint bench

run:  ## install (first time) and start everything on this machine
	python3 run.py

test:  ## the whole test suite (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set)
	python3 run.py test

engine:  ## the local backend's engine: vLLM on CPU in its own venv, and the two small models (~3 min once)
	python3 run.py engine

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	SECRET_KEY=type-checking-only .venv/bin/mypy marketplace serving learning deploy

bench:  ## benchmarks that print their figures (DATABASE_URL/REDIS_URL when set, else embedded servers)
	.venv/bin/python bench/catalog.py
	.venv/bin/python bench/catalog_page.py
	.venv/bin/python bench/provision.py
	.venv/bin/python bench/costs.py
	.venv/bin/python bench/routing.py
	.venv/bin/python bench/guardrails.py
