#!/usr/bin/env bash
# The 5-minute tour on a throw-away copy of examples/fleet-repo: validate, plan, apply,
# status, revoke by editing the CSV, apply again, inspect the CRL with openssl, verify the
# signed firmware release.
# Everything happens in a temporary directory: your checkout is left unchanged.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/fleetpki-quickstart.XXXXXX")"
export FLEETPKI_STATE_DIR="$work/state"
export FLEETPKI_PASSPHRASE="${FLEETPKI_PASSPHRASE:-quickstart-demo-passphrase}"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

cp -r "$here/fleet-repo" "$work/fleet-repo"
cd "$work/fleet-repo"
git init -q -b main
git -c user.name=quickstart -c user.email=quickstart@localhost add -A
git -c user.name=quickstart -c user.email=quickstart@localhost commit -q -m "Fleet declaration"

step fleetpki validate .
step fleetpki plan . -o markdown
step fleetpki apply .
step fleetpki status .
step git log --oneline fleetpki/status

echo; echo "# Revoke sensor-0042 (key compromise) and retire sensor-0043 by editing the CSV:"
sed -i -e 's/^\(sensor-0042,.*\),$/\1,keyCompromise/' -e '/^sensor-0043,/d' fleets/sensors.csv
git -c user.name=quickstart -c user.email=quickstart@localhost commit -q -am "Revoke two sensors"
step fleetpki plan .
step fleetpki apply .
step fleetpki export crl . --ca devices-ca --out "$work/devices-ca.crl.pem"
step openssl crl -in "$work/devices-ca.crl.pem" -noout -text
step fleetpki export cert . --fleet sensors --device sensor-0001 --out "$work/sensor-0001"
step openssl verify -x509_strict -CAfile "$work/sensor-0001/ca.pem" \
  -untrusted "$work/sensor-0001/chain.pem" "$work/sensor-0001/cert.pem"

echo; echo "# The signed firmware release (releases/sensor-fw.yaml), as a sensor checks it:"
step fleetpki export release . --release sensor-fw-1.4.2 --out "$work/sensor-fw"
step fleetpki verify releases/sensor-fw-1.4.2.bin --manifest "$work/sensor-fw/manifest.json" \
  --trust "$work/sensor-fw/ca.pem" --crl "$work/devices-ca.crl.pem" --fleet sensors
echo; echo "Everything is in $work (state: $FLEETPKI_STATE_DIR). Remove it when done."
