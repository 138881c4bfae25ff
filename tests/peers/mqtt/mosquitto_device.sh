#!/usr/bin/env bash
# A device made of mosquitto_pub / mosquitto_sub (Debian mosquitto-clients), computing
# its own SPEC §10 credentials with openssl.
#   mosquitto_device.sh pub  HOST PORT PK DN SECRET TOPIC PAYLOAD   (QoS 1; exit code of mosquitto_pub)
#   mosquitto_device.sh sub  HOST PORT PK DN SECRET TOPIC SECONDS   (prints received payloads)
#   mosquitto_device.sh bad  HOST PORT PK DN SECRET TOPIC PAYLOAD   (signs with a wrong secret)
set -uo pipefail
mode=$1 host=$2 port=$3 pk=$4 dn=$5 secret=$6 topic=$7 arg=$8
any_id="mosq-$dn-$mode"
ts=$(($(date +%s%N) / 1000000))
client_id="${any_id}|securemode=3,signmethod=hmacsha256,timestamp=${ts}|"
[ "$mode" = bad ] && secret="not-the-secret"
password=$(printf '%s' "clientId${any_id}deviceName${dn}productKey${pk}timestamp${ts}" \
  | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
case $mode in
  pub|bad)
    exec mosquitto_pub -V mqttv311 -h "$host" -p "$port" -i "$client_id" -u "${dn}&${pk}" \
      -P "$password" -q 1 -t "$topic" -m "$arg" ;;
  sub)
    exec mosquitto_sub -V mqttv311 -h "$host" -p "$port" -i "$client_id" -u "${dn}&${pk}" \
      -P "$password" -q 1 -t "$topic" -W "$arg" -v ;;
esac
echo "unknown mode $mode" >&2
exit 2
