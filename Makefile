# PredictFlow: `make serve` runs the service on the embedded defaults,
# `make test` runs every test suite. Both set up what they need first.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 3000
BIN := $(VENV)/bin

.PHONY: install bootstrap serve consumer kafka-up kafka-down test test-unit lint \
        typecheck test-services bench bench-quick clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet --constraint constraints.txt --editable ".[dev]"
	touch $@

install: $(BIN)/.installed

## Train, register, materialize features and import the model (quick when done).
bootstrap: install
	$(BIN)/predictflow bootstrap

## Serve POST /predict on http://$(HOST):$(PORT) (SQLite features, local MLflow).
serve: bootstrap
	$(BIN)/bentoml serve service:ChurnPredictor --host $(HOST) --port $(PORT)

## A real Apache Kafka broker (KRaft) on 127.0.0.1:9092; jars from Maven Central.
## KAFKA_SECURITY=sasl_ssl: SASL_SSL only, with users and ACLs (scripts/kafka.sh).
kafka-up:
	KAFKA_SECURITY="$(KAFKA_SECURITY)" scripts/kafka.sh up

kafka-down:
	scripts/kafka.sh down

## The Kafka runner alone (needs PREDICTFLOW_KAFKA__BOOTSTRAP_SERVERS).
consumer: bootstrap
	$(BIN)/python -m consumers

## redis-server for the integration tests (installed with apt-get if missing).
test-services:
	@scripts/ensure-test-services.sh

## Every suite: unit, model, integration (real bentoml serve, Redis, Kafka).
test: install test-services
	$(BIN)/pytest

## Benchmarks (not tests): REST on Redis and SQLite against a FastAPI baseline,
## Kafka throughput and latency, cold start, RSS. Up to 20 minutes.
bench: install test-services
	$(BIN)/python -m bench.run

bench-quick: install test-services
	$(BIN)/python -m bench.run --quick

test-unit: install
	$(BIN)/pytest tests/unit tests/model

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf var feature_repo/data .pytest_cache .mypy_cache .ruff_cache
