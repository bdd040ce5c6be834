# Settings and helpers shared by up.sh and down.sh (sourced, not run).
#
# Everything lives in $REALTIME_LOCAL_DIR (default: .local in the repo):
#   pg/            the Postgres cluster (wal_level=logical), port $REALTIME_LOCAL_PG_PORT
#   postgres.log   its log
#   redis.pid, redis.log      redis-server on $REALTIME_LOCAL_REDIS_PORT
#   ingestor.pid, ingestor.log
#   gateway{1,2}.pid, gateway{1,2}.log
#   demo.pid, demo.log          realtime-demo (the demo page and its API)
#   nginx/                      nginx.conf (generated), nginx.pid, temp dirs
#   nginx-access.log, nginx-error.log
#
# Every port can be moved with an environment variable (defaults in
# brackets), so a second stack (the local_cluster test) can run beside yours:
#   REALTIME_LOCAL_HTTP_PORT [8080]          nginx: the demo page and /api/realtime/stream
#   REALTIME_LOCAL_PG_PORT [54329]           REALTIME_LOCAL_REDIS_PORT [63799]
#   REALTIME_LOCAL_INGESTOR_ADMIN_PORT [9091]
#   REALTIME_LOCAL_GATEWAY_PORT_1/_2 [8081/8082]
#   REALTIME_LOCAL_GATEWAY_ADMIN_PORT_1/_2 [9092/9093]
#   REALTIME_LOCAL_DEMO_PORT [8090]          realtime-demo, behind nginx
# REALTIME_LOCAL_BIN_DIR names a directory holding already built
# realtime-ingestor, realtime-gateway and realtime-demo binaries: up.sh then
# runs those and does not build (default: cargo build into target/debug).
# REALTIME_LOCAL_NGINX is the nginx binary (default: nginx on PATH, else
# /usr/sbin/nginx); when there is none, up.sh installs Debian's nginx-light
# if it runs as root, unless REALTIME_LOCAL_NO_INSTALL is set.
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="${REALTIME_LOCAL_DIR:-$REPO_ROOT/.local}"
mkdir -p "$LOCAL_DIR"
LOCAL_DIR="$(cd "$LOCAL_DIR" && pwd)"

PG_PORT="${REALTIME_LOCAL_PG_PORT:-54329}"
REDIS_PORT="${REALTIME_LOCAL_REDIS_PORT:-63799}"
ADMIN_LISTEN="127.0.0.1:${REALTIME_LOCAL_INGESTOR_ADMIN_PORT:-9091}"
PG_DATA="$LOCAL_DIR/pg"
PG_LOG="$LOCAL_DIR/postgres.log"
PG_PASSWORD="postgres"
DB_NAME="oikion"
DATABASE_URL_LOCAL="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"
REDIS_URL_LOCAL="redis://127.0.0.1:$REDIS_PORT"
REDIS_PID="$LOCAL_DIR/redis.pid"
REDIS_LOG="$LOCAL_DIR/redis.log"
BIN_DIR="${REALTIME_LOCAL_BIN_DIR:-$REPO_ROOT/target/debug}"
INGESTOR_BIN="$BIN_DIR/realtime-ingestor"
INGESTOR_PID="$LOCAL_DIR/ingestor.pid"
INGESTOR_LOG="$LOCAL_DIR/ingestor.log"
GATEWAY_BIN="$BIN_DIR/realtime-gateway"
# Two gateway replicas: public port, admin port.
GATEWAY_PORTS=("${REALTIME_LOCAL_GATEWAY_PORT_1:-8081}" "${REALTIME_LOCAL_GATEWAY_PORT_2:-8082}")
GATEWAY_ADMIN_PORTS=("${REALTIME_LOCAL_GATEWAY_ADMIN_PORT_1:-9092}" "${REALTIME_LOCAL_GATEWAY_ADMIN_PORT_2:-9093}")
DEMO_BIN="$BIN_DIR/realtime-demo"
DEMO_PORT="${REALTIME_LOCAL_DEMO_PORT:-8090}"
DEMO_PID="$LOCAL_DIR/demo.pid"
DEMO_LOG="$LOCAL_DIR/demo.log"
HTTP_PORT="${REALTIME_LOCAL_HTTP_PORT:-8080}"
NGINX_DIR="$LOCAL_DIR/nginx"
NGINX_CONF="$NGINX_DIR/nginx.conf"
NGINX_PID="$NGINX_DIR/nginx.pid"
NGINX_ERROR_LOG="$LOCAL_DIR/nginx-error.log"
NGINX_ACCESS_LOG="$LOCAL_DIR/nginx-access.log"
KEY_PREFIX="${REALTIME_KEY_PREFIX:-rt}"

# cargo from rustup may not be on a non-login shell's PATH.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

is_root() { [[ "$(id -u)" == 0 ]]; }

# The nginx binary, or nothing when it is not installed (Debian installs it
# in /usr/sbin, which a normal user's PATH may lack).
nginx_bin() {
    local bin="${REALTIME_LOCAL_NGINX:-}"
    if [[ -z "$bin" ]]; then
        bin="$(command -v nginx 2>/dev/null || true)"
        [[ -n "$bin" ]] || bin=/usr/sbin/nginx
    fi
    [[ -x "$bin" ]] && echo "$bin"
}

# Runs a Postgres server command as the postgres user when we are root
# (initdb, postgres and pg_ctl refuse to run as root).
as_postgres() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# The directory of initdb/pg_ctl/psql: pg_config --bindir, else the newest
# /usr/lib/postgresql/*/bin.
pg_bindir() {
    local dir dirs
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$dir" && -x "$dir/initdb" ]]; then
            echo "$dir"
            return 0
        fi
    fi
    mapfile -t dirs < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    for dir in "${dirs[@]}"; do
        if [[ -x "$dir/initdb" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Whether the pid in file $1 is a live process.
pid_alive() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# Whether a Redis server on 127.0.0.1:$1 answers PING (plain bash, no
# redis-cli needed). In a subshell: a failed `exec` redirection would end
# the calling shell.
redis_ping() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ "$reply" == "+PONG"* ]]
    ) 2>/dev/null
}

# Sends SIGTERM to the pid in file $1, waits up to $2 seconds, then SIGKILL.
stop_pidfile() {
    local file="$1" grace="$2" pid i
    if pid_alive "$file"; then
        pid="$(cat "$file")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "pid $pid did not stop within ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}
