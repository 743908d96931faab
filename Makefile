# PredictFlow: `make serve` runs the service on the embedded defaults,
# `make test` runs every test suite. Both set up what they need first.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 3000
# Idle keep-alive seconds (uvicorn's default 5 is shorter than the proxies'
# in front; see KEEP_ALIVE_S in devtools/processes.py).
KEEP_ALIVE_S ?= 75
BIN := $(VENV)/bin

.PHONY: install bootstrap serve consumer kafka-up kafka-down test test-unit lint \
        typecheck test-services bench bench-quick bench-readme clean \
        docker-up docker-down docker-images image test-containers compose-secrets \
        settings-doc

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
	$(BIN)/bentoml serve service:ChurnPredictor --host $(HOST) --port $(PORT) \
	  --timeout-keep-alive $(KEEP_ALIVE_S)

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
test: install test-services k8s-tools bench-tools
	$(BIN)/pytest

## Benchmarks (not tests): REST on Redis and SQLite against a FastAPI baseline,
## Kafka throughput and latency, cold start, RSS. About 40 minutes on 2 cores.
bench: install test-services
	$(BIN)/python -m bench.run

## The README's targets table from bench/results/latest.json.
bench-readme: install
	$(BIN)/python -m bench.report README.md

bench-quick: install test-services
	$(BIN)/python -m bench.run --quick

test-unit: install
	$(BIN)/pytest tests/unit tests/model

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Containers (docs-containers.md). A Docker engine: the one that answers, else
## our own dockerd (host networking only, data in var/docker).
docker-up:
	scripts/docker-engine.sh up

docker-down:
	scripts/docker-engine.sh down

# Every recipe line that talks to the engine runs with its DOCKER_HOST.
DOCKER_ENV = eval "$$(scripts/docker-engine.sh env)" &&
## local: build on predictflow-local/python (no registry needed); upstream:
## BentoML's python:3.11-slim; auto: local on our own engine, else upstream.
IMAGE_BASE ?= auto

## Local base images from Debian packages and Maven jars (cached by content).
docker-images: docker-up
	$(DOCKER_ENV) scripts/images.sh build

## The service image: bootstrap (SQLite store materialized), bentoml build,
## bentoml containerize -> churn-predictor:<bento version> and :latest.
image: install docker-up
	PREDICTFLOW_FEAST__ONLINE_STORE=sqlite $(BIN)/predictflow bootstrap
	$(DOCKER_ENV) BENTOML=$(BIN)/bentoml IMAGE_BASE=$(IMAGE_BASE) scripts/images.sh service

# The container suite: the service image, then the integration tests that need
# Redis and Kafka, with both from testcontainers: REST and the online store on
# the Redis container, request/reply through the runner in the service on the
# Kafka container. Left to `make test`, to keep CI's two suites within 30
# minutes on a cold machine: the Kafka tests that stop their own broker (they
# use scripts/kafka.sh whatever the suite), the standalone-runner scale tests
# and test_kafka_faults.py (the same broker, 3 more minutes here), and
# test_unavailable.py (no Redis or Kafka in it).
CONTAINER_TESTS = tests/integration/test_image.py tests/integration/test_rest.py \
        tests/integration/test_features.py tests/integration/test_kafka.py
# The chaos tests (kills, rebalances, zombies) test the runner, not where the
# broker runs: they run in `make test` only.
CONTAINER_DESELECT = not broker_restart and not broker_is_down and not sigkill \
        and not joining_and_leaving and not sigterm_exits and not rebalance \
        and not zombie

## docs/settings.md from the Settings class (a unit test fails when it is stale).
settings-doc: install
	$(BIN)/python -m predictflow.settings_doc > docs/settings.md

## Dev secrets for docker compose: .env (random passwords) and deploy/secrets/
## (the REST token and tokens file, the requester's Kafka login). Idempotent.
compose-secrets: install
	$(BIN)/python scripts/compose_secrets.py

## Integration tests against containers (testcontainers, local images).
test-containers: install docker-images image
	$(DOCKER_ENV) export PREDICTFLOW_TEST_CONTAINERS=1 TESTCONTAINERS_RYUK_DISABLED=true; \
	  $(BIN)/pytest $(CONTAINER_TESTS) -k "$(CONTAINER_DESELECT)" --durations=10; rc=$$?; \
	  left=$$(docker ps -aq --filter label=predictflow.test); \
	  if [ -n "$$left" ]; then echo "removing containers left behind: $$left"; docker rm -f $$left >/dev/null; fi; \
	  exit $$rc

clean:
	rm -rf var feature_repo/data .pytest_cache .mypy_cache .ruff_cache

# --- k8s/ and canary-analysis tools ------------------------------------------
# What tests/deploy (the CRD kinds' schemas: npm, tools/k8s-validate) and the
# canary analysis tests (Argo Rollouts' condition rules: Go, tools/argo-eval)
# need installed; the tests fail without them and never download.
.PHONY: k8s-tools
K8S_VALIDATE_DIR := tools/k8s-validate
ARGO_EVAL_DIR := tools/argo-eval

$(K8S_VALIDATE_DIR)/node_modules/.installed: $(K8S_VALIDATE_DIR)/package.json $(K8S_VALIDATE_DIR)/package-lock.json
	cd $(K8S_VALIDATE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## npm's CRD-schema models and the Go module of the condition evaluator.
k8s-tools: $(K8S_VALIDATE_DIR)/node_modules/.installed
	cd $(ARGO_EVAL_DIR) && go mod download && go build -o /dev/null .

# The bench's live Kafka client (Go, tools/kafka-load): the bench builds it;
# tests/integration/test_kafka_load.py builds it from the module cache.
.PHONY: bench-tools
KAFKA_LOAD_DIR := tools/kafka-load

## The Go module of the bench's live Kafka client.
bench-tools:
	cd $(KAFKA_LOAD_DIR) && go mod download && go build -o /dev/null .
