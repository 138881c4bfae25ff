#!/usr/bin/env bash
# Installs the outside clients and tools the tests use as real peers, if missing.
# Everything comes from Debian, PyPI or npm by package name. Idempotent and quick when
# everything is present.
#   Debian: python3-dev (to build python-qpid-proton), mosquitto-clients, chromium,
#           protobuf-compiler (protoc for tonic-build), postgresql-client, nats-server
#   PyPI:   tests/peers/requirements.txt (python-qpid-proton, grpcio, grpcio-tools, paho-mqtt,
#           schemathesis)
#   npm:    tests/peers/package.json (rhea, playwright-core)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v gcc >/dev/null || need_apt+=(gcc)
# The JetStream backlog tests start their own nats-server (Debian's is 2.9.10).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 -c "import proton, grpc, grpc_tools, paho.mqtt, schemathesis" 2>/dev/null; then
  echo "install-test-deps: pip install -r tests/peers/requirements.txt"
  python3 -m pip install -q --disable-pip-version-check -r tests/peers/requirements.txt
fi

if [ ! -d tests/peers/node_modules/rhea ] || [ ! -d tests/peers/node_modules/playwright-core ]; then
  echo "install-test-deps: npm install (tests/peers)"
  (cd tests/peers && npm install --no-audit --no-fund --silent)
fi
