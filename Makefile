# Developer and CI entry points. `.ci/run` runs `make lint` and `make test`,
# so what passes here passes in CI.
#
# Tests start their own PostgreSQL and Redis from the installed binaries
# (see tests/src/lib.rs); they never use services on 5432/6379.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: all build test test-deploy test-js lint fmt up down logs bench-ingest bench-ingest-memory bench-fanout soak

all: build

## build: every binary of the workspace (debug profile)
build:
	$(CARGO) build --workspace --bins

## deps: install what the tests need and the machine lacks (apt: PostgreSQL,
## Redis, Python, promtool, nginx, Chromium; pip: kubernetes-validate;
## Node.js >= 20.19), with sudo when not root. Looks only, when all is there.
## See scripts/install-test-deps.
.PHONY: deps
deps:
	PYTHON=$(PYTHON) scripts/install-test-deps

## test: every unit, integration and doc test, after `deps`. The binaries are
## built first because crash tests run them as real processes
## (realtime_tests::binary_path). The integration tests are one binary
## (tests/tests/main.rs, `--test integration`), linked once, whose tests share
## one Postgres and one Redis. `cargo test` rather than nextest: nextest's
## process per test would start a pair per test. test-deploy first: it takes
## seconds.
test: deps build test-deploy test-js
	$(CARGO) test --workspace

## test-js: the TypeScript client (clients/js): npm ci, build to dist/, type
## check, Vitest. Before `cargo test`: its client_js test runs the built
## package in headless Chromium against the real services.
test-js: deps
	cd clients/js && npm ci --no-audit --no-fund && npm run build && npm run typecheck && npm test

## test-deploy: render deploy/k8s (base and production overlay) and validate
## every object against the Kubernetes schemas; promtool check and unit tests
## of deploy/grafana/alerts.yaml; the dashboard's JSON and PromQL; the
## Dockerfile (deploy/k8s/check.py; `deps` installs its tools)
test-deploy: deps
	$(PYTHON) deploy/k8s/check.py

## lint: formatting, no import cycle among a crate's top-level modules
## (scripts/check-module-cycles), and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(PYTHON) scripts/check-module-cycles
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

## bench-ingest-memory: the ingestor's peak RSS through a 1,000,000-row
## transaction (2,000 organizations; then one organization, coalesced) and
## through 100 MB TOASTed values (tests/src/bin/bench_ingest_memory.rs),
## release build. BENCH_MEMORY_ROWS, BENCH_MEMORY_TOAST_MB tune it.
bench-ingest-memory:
	$(CARGO) build --release -p realtime-ingestor
	$(CARGO) run --release -p realtime-tests --bin bench_ingest_memory

## bench-fanout: one gateway replica with 1,000 then 9,000 SSE clients over
## 100 organizations: RSS per idle connection, deliveries/s and
## commit→client latency at 1,000 events/s (tests/src/bin/bench_fanout/;
## clients in several sse_load processes), release build. BENCH_CLIENTS,
## BENCH_ORGS, BENCH_USERS, BENCH_RATE, BENCH_SECONDS, BENCH_PER_PROCESS,
## BENCH_CLIENT_ROUND_US (load clients read in 1 ms rounds; 0: as data arrives) tune it.
## BENCH_CASE=hot-org|two-replicas|storm|cluster|default picks a case (README, Gateway fan-out);
## its "targets" line checks issue 16's p99 targets (25 ms; hot-org 100 ms; none for storm).
bench-fanout:
	$(CARGO) build --release -p realtime-ingestor -p realtime-gateway
	$(CARGO) build --release -p realtime-tests --bin sse_load
	$(CARGO) run --release -p realtime-tests --bin bench_fanout

## soak: the fault oracle (tests/src/oracle) over ORACLE_SEEDS seeds (default
## 20) of ORACLE_EVENTS rows each (default 5,200): kill -9 and SIGTERM drains
## of the real ingestor and gateways, Redis (AOF) and Postgres restarts,
## membership churn, resuming SSE clients, the database as the truth. Prints
## events, faults by kind, each seed's result and the wall time; exits 1 if a
## seed failed. ORACLE_SEED=<n> starts at seed n. SOAK_PROFILE=dev uses the
## debug build instead of a release one.
SOAK_PROFILE ?= release
soak:
	$(CARGO) build --profile $(SOAK_PROFILE) -p realtime-ingestor -p realtime-gateway --bins
	$(CARGO) run --profile $(SOAK_PROFILE) -p realtime-tests --bin fault_soak

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
