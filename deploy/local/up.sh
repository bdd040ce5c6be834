#!/usr/bin/env bash
# `make up`: a local realtime stack for development, on ports that do not
# collide with system services:
#   Postgres 15+  127.0.0.1:${REALTIME_LOCAL_PG_PORT:-54329}  (cluster in .local/pg, wal_level=logical,
#                 database `oikion` with the Oikion schema and demo data, loaded once)
#   Redis         127.0.0.1:${REALTIME_LOCAL_REDIS_PORT:-63799}  (no persistence)
#   ingestor      target/debug/realtime-ingestor, admin on 127.0.0.1:9091
#   gateways      two realtime-gateway replicas on 127.0.0.1:8081 and :8082 (admin :9092, :9093)
#   demo          realtime-demo (deploy/local/demo): the demo page and its JSON API, 127.0.0.1:8090
#   nginx         127.0.0.1:${REALTIME_LOCAL_HTTP_PORT:-8080}: the demo page at /, /api/realtime/*
#                 balanced over both gateways, SSE-safe (deploy/local/nginx.conf.template)
# Every port can be moved (see common.sh). Re-running it starts only what is
# not running. `make down` stops it all, `make logs` follows every log.
# Works as a normal user and as root (Postgres then runs as `postgres`; nginx's
# workers as root, the user who ran it). nginx is Debian's package: as root
# it is installed when missing, otherwise the message says how.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PG_BIN="$(pg_bindir)" || die "PostgreSQL server binaries not found: install postgresql (Debian: apt-get install postgresql)"
command -v redis-server >/dev/null 2>&1 || die "redis-server not found: install redis-server"
command -v curl >/dev/null 2>&1 || die "curl not found: install curl"
if is_root; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server as"
fi
NGINX="$(nginx_bin)" || true
if [[ -z "$NGINX" ]]; then
    # Like .ci/run: install Debian's package when we may, else say how.
    if is_root && command -v apt-get >/dev/null 2>&1 && [[ -z "${REALTIME_LOCAL_NO_INSTALL:-}" ]]; then
        say "nginx not found: installing Debian's nginx-light"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx >/dev/null ||
            die "installing nginx failed: run 'apt-get install nginx-light'"
        NGINX="$(nginx_bin)" || die "nginx installed but not found in PATH or /usr/sbin: set REALTIME_LOCAL_NGINX"
    else
        die "nginx not found (looked in PATH and /usr/sbin): install it, e.g. 'sudo apt-get install nginx-light', or set REALTIME_LOCAL_NGINX"
    fi
fi

psql_local() {
    PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

# --- Postgres -----------------------------------------------------------------

if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    say "initdb $PG_DATA"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_DATA"
    pwfile="$LOCAL_DIR/.pwfile"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    if is_root; then
        chown postgres: "$PG_DATA" "$pwfile"
        runuser -u postgres -- test -w "$PG_DATA" ||
            die "user postgres cannot write $PG_DATA (a parent directory is not traversable): set REALTIME_LOCAL_DIR"
    fi
    as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=scram-sha-256 \
        --pwfile="$pwfile" -E UTF8 --locale=C >"$LOCAL_DIR/initdb.log" 2>&1 ||
        {
            rm -f "$pwfile"
            cat "$LOCAL_DIR/initdb.log" >&2
            die "initdb failed"
        }
    rm -f "$pwfile"
    # TCP on loopback only (no Unix socket: its path could be too long), and
    # logical replication for the ingestor.
    cat >>"$PG_DATA/postgresql.conf" <<'CONF'

# --- realtime local cluster (deploy/local/up.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
wal_sender_timeout = 30s
CONF
fi

if as_postgres "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
    say "Postgres already running ($PG_DATA)"
else
    say "starting Postgres on 127.0.0.1:$PG_PORT"
    touch "$PG_LOG"
    if is_root; then chown postgres: "$PG_LOG"; fi
    as_postgres "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -o "-p $PG_PORT" >/dev/null ||
        {
            tail -n 20 "$PG_LOG" >&2
            die "Postgres did not start (log: $PG_LOG)"
        }
fi

if [[ -z "$(psql_local -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]]; then
    say "creating database $DB_NAME with the Oikion schema and demo data"
    psql_local -d postgres -c "CREATE DATABASE $DB_NAME"
    if ! psql_local -d "$DB_NAME" --single-transaction \
        -f "$REPO_ROOT/tests/fixtures/oikion-schema.sql" \
        -f "$REPO_ROOT/deploy/local/demo-data.sql"; then
        psql_local -d postgres -c "DROP DATABASE $DB_NAME" || true
        die "loading the schema and demo data failed"
    fi
fi

# --- Redis --------------------------------------------------------------------

if pid_alive "$REDIS_PID" && redis_ping "$REDIS_PORT"; then
    say "Redis already running on 127.0.0.1:$REDIS_PORT"
else
    redis_ping "$REDIS_PORT" && die "something else answers on 127.0.0.1:$REDIS_PORT: set REALTIME_LOCAL_REDIS_PORT"
    say "starting Redis on 127.0.0.1:$REDIS_PORT"
    rm -f "$REDIS_PID"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$LOCAL_DIR" --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG"
    for ((i = 0; i < 100; i++)); do
        redis_ping "$REDIS_PORT" && break
        sleep 0.1
    done
    redis_ping "$REDIS_PORT" || {
        tail -n 20 "$REDIS_LOG" >&2
        die "Redis did not answer PING within 10 s (log: $REDIS_LOG)"
    }
fi

# --- ingestor -----------------------------------------------------------------

if [[ -n "${REALTIME_LOCAL_BIN_DIR:-}" ]]; then
    for bin in "$INGESTOR_BIN" "$GATEWAY_BIN" "$DEMO_BIN"; do
        [[ -x "$bin" ]] || die "REALTIME_LOCAL_BIN_DIR: $bin is missing: run 'cargo build --workspace --bins'"
    done
else
    say "building realtime-ingestor, realtime-gateway and realtime-demo"
    (cd "$REPO_ROOT" && cargo build --quiet --bin realtime-ingestor --bin realtime-gateway --bin realtime-demo)
fi

if pid_alive "$INGESTOR_PID"; then
    say "ingestor already running (pid $(cat "$INGESTOR_PID")); 'make down && make up' restarts it"
else
    say "starting the ingestor (log: $INGESTOR_LOG)"
    DATABASE_URL="$DATABASE_URL_LOCAL" \
        REDIS_URL="$REDIS_URL_LOCAL" \
        REALTIME_MANAGE_REPLICA_IDENTITY=true \
        REALTIME_ADMIN_LISTEN="$ADMIN_LISTEN" \
        NO_COLOR=1 \
        nohup "$INGESTOR_BIN" </dev/null >>"$INGESTOR_LOG" 2>&1 &
    echo $! >"$INGESTOR_PID"
fi

ready=""
for ((i = 0; i < 60; i++)); do
    if curl -fs "http://$ADMIN_LISTEN/readyz" >/dev/null 2>&1; then
        ready=yes
        break
    fi
    if ! pid_alive "$INGESTOR_PID"; then
        tail -n 20 "$INGESTOR_LOG" >&2
        die "the ingestor exited (log: $INGESTOR_LOG)"
    fi
    sleep 1
done
if [[ -z "$ready" ]]; then
    tail -n 20 "$INGESTOR_LOG" >&2
    die "the ingestor is not ready after 60 s: curl http://$ADMIN_LISTEN/readyz (log: $INGESTOR_LOG)"
fi

# --- gateways -----------------------------------------------------------------

for n in 0 1; do
    port="${GATEWAY_PORTS[$n]}"
    admin="127.0.0.1:${GATEWAY_ADMIN_PORTS[$n]}"
    pidfile="$LOCAL_DIR/gateway$((n + 1)).pid"
    log="$LOCAL_DIR/gateway$((n + 1)).log"
    if pid_alive "$pidfile"; then
        say "gateway $((n + 1)) already running (pid $(cat "$pidfile"))"
        continue
    fi
    say "starting gateway $((n + 1)) on 127.0.0.1:$port (log: $log)"
    DATABASE_URL="$DATABASE_URL_LOCAL" \
        REDIS_URL="$REDIS_URL_LOCAL" \
        REALTIME_LISTEN="127.0.0.1:$port" \
        REALTIME_ADMIN_LISTEN="$admin" \
        AUTH_SECRET="local-development-secret-not-for-production" \
        NO_COLOR=1 \
        nohup "$GATEWAY_BIN" </dev/null >>"$log" 2>&1 &
    echo $! >"$pidfile"
    ready=""
    for ((i = 0; i < 30; i++)); do
        if curl -fs "http://$admin/readyz" >/dev/null 2>&1; then
            ready=yes
            break
        fi
        pid_alive "$pidfile" || { tail -n 20 "$log" >&2; die "gateway $((n + 1)) exited (log: $log)"; }
        sleep 1
    done
    [[ -n "$ready" ]] || { tail -n 20 "$log" >&2; die "gateway $((n + 1)) not ready after 30 s (log: $log)"; }
done

# --- demo backend -------------------------------------------------------------

if pid_alive "$DEMO_PID"; then
    say "demo backend already running (pid $(cat "$DEMO_PID"))"
else
    say "starting the demo backend on 127.0.0.1:$DEMO_PORT (log: $DEMO_LOG)"
    DATABASE_URL="$DATABASE_URL_LOCAL" \
        REALTIME_DEMO_LISTEN="127.0.0.1:$DEMO_PORT" \
        NO_COLOR=1 \
        nohup "$DEMO_BIN" </dev/null >>"$DEMO_LOG" 2>&1 &
    echo $! >"$DEMO_PID"
    ready=""
    for ((i = 0; i < 300; i++)); do
        if curl -fs "http://127.0.0.1:$DEMO_PORT/healthz" >/dev/null 2>&1; then
            ready=yes
            break
        fi
        pid_alive "$DEMO_PID" || { tail -n 20 "$DEMO_LOG" >&2; die "the demo backend exited (log: $DEMO_LOG)"; }
        sleep 0.1
    done
    [[ -n "$ready" ]] || { tail -n 20 "$DEMO_LOG" >&2; die "the demo backend is not answering after 30 s (log: $DEMO_LOG)"; }
fi

# --- nginx --------------------------------------------------------------------

if pid_alive "$NGINX_PID"; then
    say "nginx already running (pid $(cat "$NGINX_PID")) on 127.0.0.1:$HTTP_PORT"
else
    say "starting nginx on 127.0.0.1:$HTTP_PORT (logs: $NGINX_ACCESS_LOG, $NGINX_ERROR_LOG)"
    mkdir -p "$NGINX_DIR/tmp"
    user_line="# (not root: the workers run as the user who started nginx)"
    if is_root; then
        user_line="user $(id -un) $(id -gn);"
    fi
    sed -e "s|@USER_LINE@|$user_line|" \
        -e "s|@NGINX_PID@|$NGINX_PID|" \
        -e "s|@NGINX_ERROR_LOG@|$NGINX_ERROR_LOG|" \
        -e "s|@NGINX_ACCESS_LOG@|$NGINX_ACCESS_LOG|" \
        -e "s|@NGINX_DIR@|$NGINX_DIR|g" \
        -e "s|@GATEWAY_PORT_1@|${GATEWAY_PORTS[0]}|" \
        -e "s|@GATEWAY_PORT_2@|${GATEWAY_PORTS[1]}|" \
        -e "s|@DEMO_PORT@|$DEMO_PORT|" \
        -e "s|@HTTP_PORT@|$HTTP_PORT|" \
        "$REPO_ROOT/deploy/local/nginx.conf.template" >"$NGINX_CONF"
    # -p/-e: nothing of Debian's /etc/nginx or /var/log/nginx is used.
    nginx_args=(-p "$NGINX_DIR" -c "$NGINX_CONF" -e "$NGINX_ERROR_LOG")
    "$NGINX" "${nginx_args[@]}" -t -q 2>>"$NGINX_ERROR_LOG" ||
        { tail -n 20 "$NGINX_ERROR_LOG" >&2; die "nginx refused its configuration $NGINX_CONF"; }
    rm -f "$NGINX_PID"
    "$NGINX" "${nginx_args[@]}" </dev/null >/dev/null 2>>"$NGINX_ERROR_LOG" ||
        {
            tail -n 5 "$NGINX_ERROR_LOG" >&2
            die "nginx did not start (port 127.0.0.1:$HTTP_PORT taken? set REALTIME_LOCAL_HTTP_PORT; log: $NGINX_ERROR_LOG)"
        }
    ready=""
    for ((i = 0; i < 100; i++)); do
        if pid_alive "$NGINX_PID" && curl -fs "http://127.0.0.1:$HTTP_PORT/nginx-health" >/dev/null 2>&1; then
            ready=yes
            break
        fi
        sleep 0.1
    done
    [[ -n "$ready" ]] || { tail -n 20 "$NGINX_ERROR_LOG" >&2; die "nginx is not answering on 127.0.0.1:$HTTP_PORT after 10 s (log: $NGINX_ERROR_LOG)"; }
fi
# Through nginx, end to end: the page and the gateways' auth answer.
curl -fs "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 ||
    die "nginx does not reach the demo backend: curl http://127.0.0.1:$HTTP_PORT/healthz (logs: $NGINX_ERROR_LOG, $DEMO_LOG)"

DEMO_URL="http://127.0.0.1:$HTTP_PORT/"
cat <<INFO

Local realtime stack is up:
  Postgres   $DATABASE_URL_LOCAL   (data $PG_DATA, log $PG_LOG)
  Redis      $REDIS_URL_LOCAL   (log $REDIS_LOG)
  ingestor   pid $(cat "$INGESTOR_PID"), admin http://$ADMIN_LISTEN/{healthz,readyz,metrics}, log $INGESTOR_LOG
  gateways   http://127.0.0.1:${GATEWAY_PORTS[0]} and http://127.0.0.1:${GATEWAY_PORTS[1]}, admin :${GATEWAY_ADMIN_PORTS[0]} and :${GATEWAY_ADMIN_PORTS[1]}, logs $LOCAL_DIR/gateway{1,2}.log
  demo       http://127.0.0.1:$DEMO_PORT (page + JSON API), log $DEMO_LOG
  nginx      http://127.0.0.1:$HTTP_PORT: / → demo, /api/realtime/ → both gateways, logs $NGINX_ACCESS_LOG, $NGINX_ERROR_LOG

Open the demo page: pick an organization and a user, connect, create/update/delete properties
and watch their events arrive live:
  Demo page: $DEMO_URL

Stream org_acme's events as alice through nginx (a demo database session, like the app's Auth.js cookie):
  curl -N -H 'Cookie: authjs.session-token=demo-session-alice' 'http://127.0.0.1:$HTTP_PORT/api/realtime/stream?organizationId=org_acme'

Watch the live events of the demo organization org_acme (Acme Realty) in Redis:
  redis-cli -p $REDIS_PORT SUBSCRIBE '$KEY_PREFIX:{org:org_acme}'
and its history:
  redis-cli -p $REDIS_PORT XRANGE '$KEY_PREFIX:{org:org_acme}:history' - +

Or change a demo property by hand to see a property.update event:
  psql '$DATABASE_URL_LOCAL' -c "UPDATE properties SET price = price + 1000, updated_at = now() WHERE id = 'prop_acme_1'"

Follow every log with 'make logs'; stop everything with 'make down'.
INFO
