#!/usr/bin/env bash
# Starts the local services the test suite talks to, if they are down:
# PostgreSQL (127.0.0.1:5432, database `test`) and NATS JetStream (127.0.0.1:4222).
# Idempotent; needs root (as on CI and the development machines) to start them.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do
    up "$1" && return 0
    sleep 0.5
  done
  echo "services: nothing listens on 127.0.0.1:$1 after 30 s" >&2
  return 1
}

if ! up 5432; then
  echo "services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  wait_port 5432
fi

if ! up 4222; then
  echo "services: starting NATS with JetStream"
  if [ -x /usr/sbin/nats-server ]; then
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
  fi
  wait_port 4222 || echo "services: NATS is not available (needed by the scale-out tests only)" >&2
fi
