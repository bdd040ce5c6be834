#!/usr/bin/env bash
# `make down`: stops what deploy/local/up.sh started (nginx, the demo
# backend, the gateways, the ingestor, Redis, Postgres), front to back. Idempotent: whatever is not running is skipped. The data in
# .local stays for the next `make up`; `down.sh --purge` removes it too.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

purge=""
case "${1:-}" in
--purge) purge=yes ;;
"") ;;
*) die "usage: $0 [--purge]" ;;
esac

# nginx first, so no new request reaches what stops next. SIGTERM is its fast
# shutdown: a graceful one (SIGQUIT) would wait for every open SSE stream.
if pid_alive "$NGINX_PID"; then
    say "stopping nginx (pid $(cat "$NGINX_PID"))"
fi
stop_pidfile "$NGINX_PID" 10

if pid_alive "$DEMO_PID"; then
    say "stopping the demo backend (pid $(cat "$DEMO_PID"))"
fi
stop_pidfile "$DEMO_PID" 10

for n in 1 2; do
    pidfile="$LOCAL_DIR/gateway$n.pid"
    if pid_alive "$pidfile"; then
        say "stopping gateway $n (pid $(cat "$pidfile"))"
    fi
    stop_pidfile "$pidfile" 30
done

if pid_alive "$INGESTOR_PID"; then
    say "stopping the ingestor (pid $(cat "$INGESTOR_PID"))"
fi
stop_pidfile "$INGESTOR_PID" 30

if pid_alive "$REDIS_PID"; then
    say "stopping Redis (pid $(cat "$REDIS_PID"))"
fi
stop_pidfile "$REDIS_PID" 10

if [[ -f "$PG_DATA/postmaster.pid" ]]; then
    PG_BIN="$(pg_bindir)" || die "PostgreSQL binaries not found, cannot stop $PG_DATA"
    if as_postgres "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
        say "stopping Postgres ($PG_DATA)"
        as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 30 >/dev/null ||
            as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 >/dev/null
    fi
fi

if [[ -n "$purge" ]]; then
    say "removing $LOCAL_DIR"
    rm -rf "$LOCAL_DIR"
fi
say "local stack is down"
