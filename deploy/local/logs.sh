#!/usr/bin/env bash
# `make logs`: follows every log of the local stack (deploy/local/up.sh) in
# one terminal, each block headed by its file name: the ingestor, both
# gateways, the demo backend, nginx (access and errors), Redis, Postgres.
# Files that do not exist yet are followed once they appear (tail -F).
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

exec tail -n "${LINES_PER_LOG:-20}" -F \
    "$INGESTOR_LOG" \
    "$LOCAL_DIR/gateway1.log" "$LOCAL_DIR/gateway2.log" \
    "$DEMO_LOG" \
    "$NGINX_ACCESS_LOG" "$NGINX_ERROR_LOG" \
    "$REDIS_LOG" "$PG_LOG"
