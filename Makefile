# Developer and CI entry points. `.ci/run` runs `make lint` and `make test`,
# so what passes here passes in CI.
#
# Tests start their own PostgreSQL and Redis from the installed binaries
# (see tests/src/lib.rs); they never use services on 5432/6379.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: all build test test-deploy test-js lint fmt up down logs bench-ingest bench-fanout

all: build

## build: every binary of the workspace (debug profile)
build:
	$(CARGO) build --workspace --bins

## test: every unit, integration and doc test. The binaries are built first
## because crash tests run them as real processes (realtime_tests::binary_path).
## `cargo test` rather than nextest: each test binary then shares one Postgres
## and one Redis between its tests; nextest's process per test would start a
## pair per test. test-deploy first: it takes seconds.
test: build test-deploy test-js
	$(CARGO) test --workspace

## test-js: the TypeScript client (clients/js): npm ci, build to dist/, type
## check, Vitest. Before `cargo test`: its client_js test runs the built
## package in headless Chromium against the real services.
test-js:
	cd clients/js && npm ci --no-audit --no-fund && npm run build && npm run typecheck && npm test

## test-deploy: render deploy/k8s (base and production overlay) and validate
## every object against the Kubernetes schemas; promtool check and unit tests
## of deploy/grafana/alerts.yaml; the dashboard's JSON and PromQL; the
## Dockerfile (deploy/k8s/check.py; .ci/run installs its tools)
test-deploy:
	$(PYTHON) deploy/k8s/check.py

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fmt: format the workspace
fmt:
	$(CARGO) fmt --all

## up: local Postgres + Redis + ingestor + two gateways + demo backend, behind
## nginx on 127.0.0.1:8080 with the live demo page (deploy/local/up.sh)
up:
	bash deploy/local/up.sh

## down: stop what `make up` started (idempotent)
down:
	bash deploy/local/down.sh

## logs: follow every log of the local stack (deploy/local/logs.sh)
logs:
	bash deploy/local/logs.sh

## bench-ingest: ingestor vs pg_recvlogical on a 200k-row backlog, and
## commit→publish latency at a steady rate (tests/src/bin/bench_ingest.rs),
## release build. BENCH_ROWS, BENCH_TXN_ROWS, BENCH_RATE, BENCH_SECONDS tune it.
bench-ingest:
	$(CARGO) build --release -p realtime-ingestor
	$(CARGO) run --release -p realtime-tests --bin bench_ingest

## bench-fanout: one gateway replica with 1,000 then 9,000 SSE clients over
## 100 organizations: RSS per idle connection, deliveries/s and
## commit→client latency at 1,000 events/s (tests/src/bin/bench_fanout.rs;
## clients in several sse_load processes), release build. BENCH_CLIENTS,
## BENCH_ORGS, BENCH_USERS, BENCH_RATE, BENCH_SECONDS, BENCH_PER_PROCESS,
## BENCH_CLIENT_ROUND_US (load clients read in 1 ms rounds; 0: as data arrives) tune it.
bench-fanout:
	$(CARGO) build --release -p realtime-ingestor -p realtime-gateway
	$(CARGO) build --release -p realtime-tests --bin sse_load
	$(CARGO) run --release -p realtime-tests --bin bench_fanout

.PHONY: fuzz
## fuzz: every fuzz target (pgoutput decoder, request-head reader, cookies
## and JWT/JWE, routes config, publish bodies) under libFuzzer on the stable
## toolchain (cargo fuzz -s none; installed if missing), FUZZ_SECONDS each
## (default 180), with a per-input timeout, an RSS cap and an allocation
## bound; prints inputs and inputs/s per target; lints and builds the fuzz
## crate (outside the workspace) first (fuzz/run.sh). `make test` replays the
## committed corpora and regression inputs (fuzz/checks/tests/corpora.rs).
fuzz:
	bash fuzz/run.sh
