#!/usr/bin/env bash
# An iotsync cluster on one machine (issue 13): a 3-server NATS JetStream cluster on free
# loopback ports (own store dirs, routes between them) and 3 iotsync nodes sharing one
# PostgreSQL database, every listener on a free port.
#
#   scripts/cluster.sh up       start it and print every node's addresses
#   scripts/cluster.sh status   which processes run, and the addresses again
#   scripts/cluster.sh down     stop everything, drop the database, remove the state dir
#
# Environment: IOTSYNC_CLUSTER_DIR (state, default /tmp/iotsync-cluster),
# IOTSYNC_CLUSTER_PG (server URL without database, default postgres://postgres@127.0.0.1:5432),
# IOTSYNC_CLUSTER_DB (database, default iotsync_cluster), IOTSYNC_BIN (default: the release
# binary, built if missing), NATS_SERVER (default: nats-server on PATH or /usr/sbin).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${IOTSYNC_CLUSTER_DIR:-/tmp/iotsync-cluster}"
pg="${IOTSYNC_CLUSTER_PG:-postgres://postgres@127.0.0.1:5432}"
db="${IOTSYNC_CLUSTER_DB:-iotsync_cluster}"
nats="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
bin="${IOTSYNC_BIN:-$root/target/release/iotsync}"

die() { echo "cluster.sh: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

psql_admin() { psql "$pg/postgres" -v ON_ERROR_STOP=1 -qAt "$@"; }

up() {
    [ -x "$nats" ] || die "nats-server not found (apt-get install nats-server, or set NATS_SERVER)"
    command -v psql >/dev/null || die "psql not found (apt-get install postgresql-client)"
    psql_admin -c 'SELECT 1' >/dev/null || die "PostgreSQL at $pg is not reachable"
    if [ -d "$dir" ] && ls "$dir"/*.pid >/dev/null 2>&1; then
        for p in "$dir"/*.pid; do
            if alive "$p"; then die "already up (scripts/cluster.sh status, or down)"; fi
        done
    fi
    if [ ! -x "$bin" ]; then
        echo "cluster.sh: building the release binary"
        (cd "$root" && cargo build --release -p iotsync-cli --bin iotsync)
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
        psql_admin -c "CREATE DATABASE $db"
    fi

    local client=() route=() urls=""
    for i in 1 2 3; do client[$i]=$(free_port); route[$i]=$(free_port); done
    for i in 1 2 3; do
        local routes=""
        for j in 1 2 3; do
            if [ "$j" != "$i" ]; then routes="${routes:+$routes, }\"nats-route://127.0.0.1:${route[$j]}\""; fi
        done
        mkdir -p "$dir/nats$i"
        cat >"$dir/nats$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${client[$i]}
jetstream { store_dir: "$dir/nats$i" }
cluster { name: iotsync, listen: 127.0.0.1:${route[$i]}, routes: [$routes] }
EOF
        "$nats" -c "$dir/nats$i.conf" >"$dir/nats$i.log" 2>&1 &
        echo $! >"$dir/nats$i.pid"
        urls="${urls:+$urls,}nats://127.0.0.1:${client[$i]}"
    done
    sleep 0.3
    for i in 1 2 3; do
        if ! alive "$dir/nats$i.pid"; then tail -5 "$dir/nats$i.log" >&2; die "nats-server $i did not start"; fi
    done
    # JetStream answers once the servers have elected a meta leader.
    for _ in $(seq 1 100); do
        grep -q "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" \
            "$dir"/nats*.log 2>/dev/null && break
        sleep 0.2
    done
    echo "$urls" >"$dir/backlog-url"

    local token
    token="cluster-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    echo "$token" >"$dir/operator-token"
    for i in 1 2 3; do
        mkdir -p "$dir/node$i"
        "$bin" serve --data-dir "$dir/node$i" \
            --store-url "$pg/$db" --backlog-url "$urls" --operator-token "$token" \
            --api-listen 127.0.0.1:0 --amqp-listen 127.0.0.1:0 --amqps-listen 127.0.0.1:0 \
            --http2-listen 127.0.0.1:0 --http2-tls-listen 127.0.0.1:0 \
            --mqtt-listen 127.0.0.1:0 --mqtts-listen 127.0.0.1:0 \
            >"$dir/node$i.out" 2>"$dir/node$i.log" &
        echo $! >"$dir/node$i.pid"
        # Nodes start one after another: the first applies the registry's migrations.
        for _ in $(seq 1 150); do
            grep -q "api listening" "$dir/node$i.out" 2>/dev/null && break
            if ! alive "$dir/node$i.pid"; then tail -20 "$dir/node$i.log" >&2; die "node $i did not start"; fi
            sleep 0.2
        done
        grep -q "api listening" "$dir/node$i.out" || die "node $i printed no addresses (see $dir/node$i.log)"
    done
    status
}

status() {
    [ -d "$dir" ] || { echo "cluster.sh: not up"; return 0; }
    echo "state:        $dir"
    if [ -f "$dir/backlog-url" ]; then echo "backlog url:  $(cat "$dir/backlog-url")"; fi
    echo "registry:     $pg/$db"
    if [ -f "$dir/operator-token" ]; then echo "operator token: $(cat "$dir/operator-token")"; fi
    for i in 1 2 3; do
        local s="down"
        if alive "$dir/nats$i.pid"; then s="up (pid $(cat "$dir/nats$i.pid"))"; fi
        echo "nats $i:       $s  $(grep -o 'listen: [0-9.:]*' "$dir/nats$i.conf" 2>/dev/null | head -1)"
    done
    for i in 1 2 3; do
        local s="down"
        if alive "$dir/node$i.pid"; then s="up (pid $(cat "$dir/node$i.pid"))"; fi
        echo "iotsync node $i: $s"
        grep -E "listening" "$dir/node$i.out" 2>/dev/null | sed 's/^/    /' || true
    done
}

down() {
    [ -d "$dir" ] || { echo "cluster.sh: not up"; return 0; }
    for p in "$dir"/node*.pid "$dir"/nats*.pid; do
        if alive "$p"; then kill "$(cat "$p")" 2>/dev/null || true; fi
    done
    for p in "$dir"/node*.pid "$dir"/nats*.pid; do
        for _ in $(seq 1 50); do alive "$p" || break; sleep 0.1; done
        if alive "$p"; then kill -9 "$(cat "$p")" 2>/dev/null || true; fi
    done
    psql_admin -c "DROP DATABASE IF EXISTS $db" || true
    rm -rf "$dir"
    echo "cluster.sh: down"
}

case "${1:-}" in
    up) up ;;
    status) status ;;
    down) down ;;
    *) die "usage: scripts/cluster.sh up|down|status" ;;
esac
