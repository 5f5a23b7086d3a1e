#!/usr/bin/env bash
# `make run`: a local Orthanc loaded with sample studies, the gateway in front of it, and the
# OHIF viewer served by the gateway at /viewer/. Ctrl-C stops both.
# Usage: run-demo.sh PORT [SET...]   (sets: core large testdata)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-8080}"; shift || true
sets=("${@:-core}")
state="$PWD/var/demo-orthanc"   # not var/orthanc: that one is `make pacs-up`'s
export PATH="$PWD/.venv/bin:$PATH"

bash scripts/orthanc.sh stop --dir "$state" --purge >/dev/null 2>&1 || true
loads=(); for s in "${sets[@]}"; do loads+=(--load "$s"); done
eval "$(bash scripts/orthanc.sh start --dir "$state" "${loads[@]}")"
trap 'bash scripts/orthanc.sh stop --dir "$state" --purge' EXIT

# The viewer is a 50 MB download the first time: without it the gateway still runs.
viewer=""
if dist=$(bash scripts/ohif.sh); then
  viewer=$'[viewer]\n'"dir = \"$dist\""
else
  echo "run-demo: could not fetch the OHIF viewer (scripts/ohif.sh): running without it" >&2
fi

base="http://127.0.0.1:$port"
config="$PWD/var/demo.toml"
cat > "$config" <<TOML
public_url = "$base"
default_site = "orthanc"
[server]
port = $port
$viewer
[[sites]]
id = "orthanc"              # the PACS over DICOMweb
url = "$DICOMWEB_ROOT"
[[sites]]
id = "dimse"                # the same PACS over DIMSE: C-FIND + C-GET, with an instance cache
kind = "dimse"
host = "127.0.0.1"
port = $ORTHANC_DICOM_PORT
called_aet = "$ORTHANC_AET"
cache_dir = "$PWD/var/cache-dimse"
[state]
sqlite = "$PWD/var/state.sqlite3"
[fhir.patient_id_issuers]
"urn:oid:1.2.203.24341.1.2" = "CZ-NCPEH"     # the sample Czech patient's issuer
TOML
study=$(curl -sf "$DICOMWEB_ROOT/studies?ModalitiesInStudy=CT&limit=1" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[0]["0020000D"]["Value"][0] if d else "")')
viewer_lines=""
if [ -n "$viewer" ]; then
  viewer_lines="
  Viewer (OHIF)                    $base/viewer/
    through DIMSE (C-FIND, C-GET)  $base/viewer/?datasources=dimse
"
fi
cat <<TXT
$viewer_lines
  PACS (Orthanc, for comparison)   $DICOMWEB_ROOT
  Gateway                          $base/dicom-web

  Try:
    curl -s '$base/dicom-web/studies?PatientName=*&limit=5'
    curl -s '$base/dicom-web/studies?StudyDate=20230101-20251231&ModalitiesInStudy=MR'
    curl -s '$base/dicom-web/studies/$study/series'
    curl -s '$base/dicom-web/studies/$study/metadata'
    curl -s -o study.multipart '$base/dicom-web/studies/$study'
    curl -s '$base/site/orthanc/dicom-web/studies'      # the same site by id
    curl -s '$base/site/dimse/dicom-web/studies'        # the same PACS through DIMSE (C-FIND)
    curl -s -o study.multipart '$base/site/dimse/dicom-web/studies/$study'   # C-GET, cached
    curl -s '$base/health/ready'

  FHIR (the NCPeH "Get Study Metadata" page's examples):
    curl -s '$base/fhir/ImagingStudy?patient.identifier=|456789123&started=ge2024-01-01&started=le2024-12-31'
    curl -s '$base/fhir/ImagingStudy?patient.identifier=|456789123&reasonCode=|90708001'
    curl -s '$base/fhir/ImagingStudy?patient.identifier=|456789123&modality=MR'
    curl -s '$base/fhir/metadata'

  Key images (FHIR R5 ImagingSelection, from the sample KOS; each one's contained Endpoint
  streams its listed instances as multipart/related):
    curl -s '$base/fhir/ImagingSelection?patient.identifier=|456789123'
    curl -s -X POST -H 'Content-Type: application/fhir+json' '$base/fhir/ImagingSelection' \
      -d '{"resourceType": "ImagingSelection", "status": "available", "code": {"text": "mine"},
           "studyUid": "<a study UID>", "seriesUid": "<its series>", "instance": [{"uid": "<an instance>"}]}'

TXT
.venv/bin/ncpeh-dicomweb serve --config "$config"
