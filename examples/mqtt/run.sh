#!/usr/bin/env bash
# Mosquitto with fleetpki certificates, end to end, on a throw-away copy of
# examples/mqtt/fleet-repo: apply, export, start a broker on a free loopback port, publish as a
# device, revoke it in the YAML, apply again, export the CRL, SIGHUP the broker, and watch the
# revoked device being refused while the others still get in. Run it from the repository root
# with fleetpki on PATH (e.g. PATH="$PWD/.venv/bin:$PATH"). Needs mosquitto and
# mosquitto-clients. Everything, the broker included, is cleaned up on exit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

find_tool() { command -v "$1" 2>/dev/null || { [[ -x "/usr/sbin/$1" ]] && echo "/usr/sbin/$1"; }; }
mosquitto="$(find_tool mosquitto)" || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }
mosquitto_pub="$(find_tool mosquitto_pub)" || { echo "mosquitto_pub not found (apt-get install mosquitto-clients)" >&2; exit 1; }
command -v fleetpki >/dev/null || { echo "fleetpki not on PATH (PATH=\"\$PWD/.venv/bin:\$PATH\")" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/fleetpki-mqtt.XXXXXX")"
broker_pid=""
cleanup() {
  if [[ -n "$broker_pid" ]]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export FLEETPKI_STATE_DIR="$work/state"
export FLEETPKI_PASSPHRASE="${FLEETPKI_PASSPHRASE:-mqtt-demo-passphrase}"
out="$work/out"
step() { printf '\n$ %s\n' "$*"; "$@"; }
fail() { echo "FAILED: $*" >&2; echo "--- broker log:" >&2; cat "$out/mosquitto.log" >&2 || true; exit 1; }

cp -r "$here/fleet-repo" "$work/fleet-repo"
cd "$work/fleet-repo"
git init -q -b main
git -c user.name=mqtt-demo -c user.email=mqtt-demo@localhost add -A
git -c user.name=mqtt-demo -c user.email=mqtt-demo@localhost commit -q -m "MQTT fleet"

step fleetpki apply .
step fleetpki export cert . --fleet brokers --device broker-01 --out "$out/broker-01"
step fleetpki export fleet . --fleet sensors --out "$out"
step fleetpki export crl . --ca mqtt-devices-ca --out "$out/crl.pem"   # PEM: mosquitto needs it
# The broker's cafile: the root (mosquitto needs a self-signed trust anchor) and the issuing CA.
cat "$out/broker-01/ca.pem" "$out/broker-01/chain.pem" > "$out/cafile.pem"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$out/mosquitto.conf" <<EOF
# run as root, mosquitto would switch to the user "mosquitto", who cannot read $work
user $(id -un)
log_dest stderr
log_type all
listener $port 127.0.0.1
cafile $out/cafile.pem
certfile $out/broker-01/cert.pem
keyfile $out/broker-01/key.pem
require_certificate true
use_identity_as_username true
crlfile $out/crl.pem
EOF
echo; echo "# mosquitto.conf:"; sed -n '/^listener/,$p' "$out/mosquitto.conf"

"$mosquitto" -c "$out/mosquitto.conf" >"$out/mosquitto.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
  kill -0 "$broker_pid" 2>/dev/null || fail "mosquitto exited"
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || fail "mosquitto is not listening on $port"
echo; echo "broker listening on 127.0.0.1:$port"

publish() {  # publish DEVICE: prints "publish as DEVICE: accepted|refused (exit N)"
  local rc=0
  "$mosquitto_pub" -h 127.0.0.1 -p "$port" --cafile "$out/cafile.pem" \
    --cert "$out/$1/cert.pem" --key "$out/$1/key.pem" -t fleet/test -m "hello from $1" \
    2>/dev/null || rc=$?
  if ((rc == 0)); then echo "publish as $1: accepted"; else echo "publish as $1: refused (exit $rc)"; fi
  return "$rc"
}
reload_broker() {  # SIGHUP, then wait until the broker has logged the reload
  local before
  before="$(grep -c 'Reloading config.' "$out/mosquitto.log" || true)"
  kill -HUP "$broker_pid"
  for _ in $(seq 100); do
    (( $(grep -c 'Reloading config.' "$out/mosquitto.log" || true) > before )) && { sleep 0.1; return 0; }
    sleep 0.05
  done
  fail "mosquitto did not log a reload"
}

echo
publish sensor-a || fail "sensor-a should be accepted"
publish sensor-b || fail "sensor-b should be accepted"

echo; echo "# Revoke sensor-a (key compromise) in the YAML, apply, export the CRL over the crlfile:"
sed -i 's/^    - id: sensor-a$/&\n      revoked: {reason: keyCompromise}/' fleets/sensors.yaml
git -c user.name=mqtt-demo -c user.email=mqtt-demo@localhost commit -q -am "Revoke sensor-a"
step fleetpki apply .
step fleetpki export crl . --ca mqtt-devices-ca --out "$out/crl.pem"

echo; echo "# The broker keeps the CRL it loaded until it is signalled:"
printf 'before reload: '; publish sensor-a || fail "expected the old CRL to be in use until SIGHUP"

echo; echo "# kill -HUP: mosquitto 2.0 re-reads the listener TLS files, crlfile included"
reload_broker
if printf 'after SIGHUP: '; publish sensor-a; then fail "revoked sensor-a was accepted"; fi
printf 'after SIGHUP: '; publish sensor-b || fail "sensor-b should still be accepted"
grep -q 'certificate verify failed' "$out/mosquitto.log" || fail "no verification failure logged"
echo "broker log: $(grep -m1 'certificate verify failed' "$out/mosquitto.log")"

echo; echo "MQTT demo passed: revoked devices are refused once the CRL is exported and the broker reloaded."
