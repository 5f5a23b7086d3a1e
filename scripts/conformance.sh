#!/usr/bin/env bash
# `make conformance`: the conformance harness (conformance/) against the gateway in front of the
# local Orthanc, through two sites: the DICOMweb site (the default) and a DIMSE site (C-FIND +
# C-GET). Reports go to build/conformance/<site>/ (report.md, junit.xml, results.json).
# The gateway asks for bearer tokens ([auth]), as a deployment does: a test IdP made here (an RSA
# key and its JWK Set file in a temp dir, removed at the end) signs them, and both runs get a
# fresh one through --token-command, so the security.* checks run too.
# The DICOMweb site's run is compared with conformance/STATUS.md (exit 3 on drift);
# `--write-status` (make conformance-status) rewrites it instead.
# Orthanc is the one of `make pacs-up` (var/orthanc), started here if it is not running (and then
# stopped again at the end). Exit status: the worst of the two runs (0 when every MUST passed).
# Usage: conformance.sh [--write-status]   environment: LOAD (data sets, default "core testdata"),
#        CONFORMANCE_ARGS (more harness options, e.g. "--only qido"),
#        CONFORMANCE_ORTHANC_DIR (the Orthanc state dir, default var/orthanc)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
status_flag=(--check-status conformance/STATUS.md)
[ "${1:-}" = "--write-status" ] && status_flag=(--write-status conformance/STATUS.md)

state="${CONFORMANCE_ORTHANC_DIR:-$PWD/var/orthanc}"
work="$PWD/var/conformance"
mkdir -p "$work" build/conformance
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

if ! bash scripts/orthanc.sh status --dir "$state" >/dev/null 2>&1; then
  loads=(); for s in ${LOAD:-core testdata}; do loads+=(--load "$s"); done
  bash scripts/orthanc.sh start --dir "$state" "${loads[@]}" >/dev/null
  cleanup+=("bash scripts/orthanc.sh stop --dir '$state' >/dev/null")
fi
set -a; source "$state/env"; set +a

# The test study: the first of the core set's Czech patient (the same UIDs on every machine), so
# two runs and the committed STATUS.md see the same data; its issuer (CZ-NCPEH) is mapped to a
# FHIR system below, so fhir.search.patient-system runs. Without the core set the harness finds one.
read -r study patient < <(python3 - "$state/manifest.json" <<'PY'
import json, sys
try:
    studies = json.load(open(sys.argv[1]))["core"]["studies"]
    s = next(s for s in studies if s["issuer_of_patient_id"] == "CZ-NCPEH")
    print(s["study_uid"], s["patient_id"])
except (OSError, KeyError, StopIteration, TypeError, ValueError):
    print("")
PY
) || true
study_args=(); [ -n "${study:-}" ] && study_args=(--study "$study" --patient "$patient")

# The test IdP: an RSA key (private, in a temp dir) and its JWK Set file for [auth] jwks_file;
# `idp.py token` prints a token valid for an hour with the scopes the routes ask for.
idp=$(mktemp -d "${TMPDIR:-/tmp}/ncpeh-conformance-idp.XXXXXX")
cleanup+=("rm -rf '$idp'")
issuer="https://idp.conformance.invalid"
audience="https://ncpeh-dicomweb.conformance.invalid/imaging"
cat > "$idp/idp.py" <<PY
"""The conformance run's test IdP: 'init' makes its key and JWK Set, 'token' signs a token."""
import json, sys, time, uuid
from pathlib import Path
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

HERE = Path(__file__).resolve().parent
KID = "conformance-rsa"
SCOPES = "system/ImagingStudy.rs system/ImagingSelection.rs system/Patient.r system/Endpoint.r"
if sys.argv[1:] == ["init"]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (HERE / "key.pem").write_bytes(pem)
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": KID, "use": "sig"}
    (HERE / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
elif sys.argv[1:] == ["token"]:
    key = serialization.load_pem_private_key((HERE / "key.pem").read_bytes(), password=None)
    now = int(time.time())
    claims = {"iss": "$issuer", "aud": "$audience", "sub": "conformance-harness",
              "client_id": "conformance-harness", "scope": SCOPES, "iat": now, "exp": now + 3600,
              "jti": str(uuid.uuid4())}
    print(jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID}))
else:
    sys.exit("usage: idp.py init | token")
PY
python3 "$idp/idp.py" init
token_command="'$PWD/.venv/bin/python' '$idp/idp.py' token"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
config="$work/gateway.toml"
cat > "$config" <<TOML
public_url = "$base"
default_site = "web"
[server]
port = $port
[[sites]]
id = "web"                  # the PACS over DICOMweb
url = "$DICOMWEB_ROOT"
[[sites]]
id = "dimse"                # the same PACS over DIMSE: C-FIND + C-GET, with an instance cache
kind = "dimse"
host = "127.0.0.1"
port = $ORTHANC_DICOM_PORT
called_aet = "$ORTHANC_AET"
calling_aet = "NCPEH-CONF"
retrieve = "c-get"
cache_dir = "$work/cache-dimse"
[state]
sqlite = "$work/state.sqlite3"
[fhir.patient_id_issuers]     # the test patient's issuer, as a FHIR identifier system
"urn:oid:1.2.203.24341.1.2" = "CZ-NCPEH"
[auth]                        # bearer tokens of the test IdP above
jwks_file = "$idp/jwks.json"
issuer = "$issuer"
audience = "$audience"
TOML
ncpeh-dicomweb serve --config "$config" > "$work/gateway.log" 2>&1 &
gateway=$!
cleanup=("kill -INT $gateway; wait $gateway" "${cleanup[@]}")
for _ in $(seq 100); do
  curl -sf "$base/health/live" >/dev/null 2>&1 && break
  kill -0 "$gateway" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
  sleep 0.2
done

worst=0
run() {  # run SITE_NAME DICOMWEB_ROOT FHIR_BASE [harness options...]
  local name=$1 root=$2 fhir=$3; shift 3
  echo "== conformance: $name site ($root)"
  local code=0
  # shellcheck disable=SC2086  # CONFORMANCE_ARGS is a list of options
  ncpeh-dicomweb conformance --base-url "$root" --fhir-url "$fhir" "${study_args[@]}" \
    --token-command "$token_command" --report-dir "build/conformance/$name" \
    ${CONFORMANCE_ARGS:-} "$@" || code=$?
  [ "$code" -gt "$worst" ] && worst=$code
  return 0
}
run dicomweb "$base/dicom-web" "$base/fhir" "${status_flag[@]}"
run dimse "$base/site/dimse/dicom-web" "$base/site/dimse/fhir"
echo "reports in build/conformance/{dicomweb,dimse}/"
exit "$worst"
