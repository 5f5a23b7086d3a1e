#!/usr/bin/env bash
# orthanc.sh - start / stop a REAL Orthanc PACS (DICOMweb + DIMSE) on loopback for the
# ncpeh-dicomweb tests and benchmarks. No Docker, no systemd: Orthanc runs as a plain child
# process with its own config, storage, log and PID file in one state directory.
#
# Usage
#   scripts/orthanc.sh start  [options]          start Orthanc, wait until it answers, print env
#   scripts/orthanc.sh stop   [--dir DIR] [--purge]   stop only the Orthanc whose PID is in
#                                                 DIR/orthanc.pid (and that runs DIR's config)
#   scripts/orthanc.sh status [--dir DIR]         exit 0 and print the env if running
#
# start options (all optional; environment variables in brackets):
#   --dir DIR           state dir (config, storage, log, pid, env)  [ORTHANC_DIR]  default mktemp -d
#   --http-port N       HTTP/DICOMweb port, 0 = pick a free one     [ORTHANC_HTTP_PORT]  default 0
#   --dicom-port N      DICOM (DIMSE) port, 0 = pick a free one     [ORTHANC_DICOM_PORT] default 0
#   --aet AET           Orthanc's own AE title                      [ORTHANC_AET]  default ORTHANC
#   --modality AE@HOST:PORT  add a C-MOVE destination / known AE; repeatable
#                       [ORTHANC_MODALITIES="AE@H:P AE2@H:P"]  STORESCP@127.0.0.1:11113 is always there
#   --pdu N             MaximumPduLength 4096..131072               [ORTHANC_PDU]  default 16384
#   --user USER:PASS    enable HTTP basic auth with this user       [ORTHANC_USER] default: auth off
#   --studies-metadata Full|MainDicomTags|Extrapolate               [ORTHANC_DW_METADATA] default Full
#   --default-encoding ENC  Orthanc's DefaultEncoding: Utf8, Latin1, ...  [ORTHANC_DEFAULT_ENCODING]
#                       default Utf8 (Orthanc's own default Latin1 makes DICOMweb answers
#                       ISO_IR 100 and silently drops characters such as the Ł of Nowak^Łukasz)
#   --load SET          load a data set with scripts/sample_data.py; repeatable:
#                         core      5 patients, 11 studies (CT/MR/CR), 231 instances, ~8 MB
#                         large     1 CT study, patient LARGE-CT-1, 4 series, 500 x 512x512, ~263 MB
#                         testdata  pydicom's bundled test files (~140 files, ~30 studies)
#                       the manifest (UIDs of everything loaded) is DIR/manifest.json
#   --foreground        run Orthanc in the foreground (Ctrl-C stops it; no PID file, no --load)
#   --nagle             keep Nagle's algorithm on Orthanc's DICOM sockets  [ORTHANC_TCP_NODELAY=0]
#   other environment:  ORTHANC_PYTHON (python for --load; default .venv/bin/python, python3)
#                       ORTHANC_START_TIMEOUT (seconds to wait for Orthanc, default 60)
#
# On success `start` prints `export KEY=VALUE` lines for eval and writes KEY=VALUE to DIR/env:
#   ORTHANC_DIR ORTHANC_PID ORTHANC_NAME ORTHANC_URL=http://127.0.0.1:PORT
#   DICOMWEB_ROOT=$ORTHANC_URL/dicom-web ORTHANC_HOST=127.0.0.1 ORTHANC_HTTP_PORT
#   ORTHANC_DICOM_PORT ORTHANC_AET ORTHANC_MODALITIES ORTHANC_TCP_NODELAY ORTHANC_VERSION
#   ORTHANC_DICOMWEB_VERSION [ORTHANC_USER] [ORTHANC_MANIFEST]
# e.g.  eval "$(scripts/orthanc.sh start --load core)"; pytest ...
#       scripts/orthanc.sh stop --dir "$ORTHANC_DIR" --purge
#
# Notes:
# * Orthanc 1.10 has no bind-address option: HTTP and DICOM listen on 0.0.0.0.
#   "RemoteAccessAllowed": false makes HTTP refuse non-loopback clients; connect to 127.0.0.1.
# * DIMSE latency: Orthanc's DICOM stack (DCMTK) leaves Nagle's algorithm on unless
#   TCP_NODELAY=1 is in Orthanc's environment (every exchange then stalls ~40 ms on delayed
#   ACKs). This script sets it by default; clients must set TCP_NODELAY on their sockets too.
# * dcmtk's findscu/getscu/movescu/storescp live in /usr/bin; pip's pynetdicom installs
#   Python apps with the same names that may shadow them on PATH.
# * Requires Debian/Ubuntu: the packages orthanc, orthanc-dicomweb, dcmtk (and curl, python3)
#   are installed with apt-get when missing (as root, or through sudo). On a machine with
#   systemd, installing the orthanc package also starts the system service on 8042/4242;
#   it does not disturb this script (free ports, unique Name).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_ROOT="$(cd "$HERE/.." && pwd)"
ORTHANC_BIN="${ORTHANC_BIN:-/usr/sbin/Orthanc}"
APT_PACKAGES=(orthanc orthanc-dicomweb dcmtk)
MARKER=".orthanc-sh-state"   # marks a state dir made by this script (stop --purge needs it)
LOAD_SETS="core large testdata"

die() { echo "orthanc.sh: error: $*" >&2; exit 1; }
log() { echo "orthanc.sh: $*" >&2; }

# ---------------------------------------------------------------- install
pkg_installed() {
  # shellcheck disable=SC2016  # ${Status} is a dpkg-query format field, not a shell variable
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "not root and no sudo: run as root: $*"
  fi
}

ensure_packages() {
  local missing=() p i
  for p in "${APT_PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 \
    || die "missing ${missing[*]} and no apt-get here: install them by hand (Debian packages)"
  log "installing ${missing[*]} (apt-get)"
  # DPkg::Lock::Timeout: wait for another apt/dpkg (e.g. unattended-upgrades) instead of failing
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
  # a fresh machine (e.g. a container) has no package lists yet
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    as_root "${apt[@]}" update >&2 || true
  fi
  for i in 1 2 3; do
    if as_root "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
      for p in "${APT_PACKAGES[@]}"; do pkg_installed "$p" || die "apt-get did not install $p"; done
      return 0
    fi
    log "apt-get install failed (attempt $i/3): refreshing package lists and retrying"
    as_root "${apt[@]}" update >&2 || true
    sleep $((i * 5))
  done
  die "could not install ${missing[*]} with apt-get"
}

dicomweb_plugin() {
  # e.g. /usr/share/orthanc/plugins/libOrthancDicomWeb.so (-> /usr/lib/orthanc/...so.1.7)
  dpkg-query -L orthanc-dicomweb | grep -m1 -E '/libOrthancDicomWeb\.so$' \
    || die "libOrthancDicomWeb.so not found (dpkg -L orthanc-dicomweb)"
}

# ---------------------------------------------------------------- processes
alive() {  # $1 pid: running and not a zombie
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != "Z" ]
}

owns() {  # $1 pid, $2 dir: true if pid is an Orthanc running the config of dir
  local pid="$1" cfg arg
  alive "$pid" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "Orthanc" ] || return 1
  cfg="$(readlink -f -- "$2/orthanc.json" 2>/dev/null)" || return 1
  while IFS= read -r -d '' arg; do
    [ "$(readlink -f -- "$arg" 2>/dev/null || true)" = "$cfg" ] && return 0
  done < "/proc/$pid/cmdline"
  return 1
}

kill_own() {  # $1 pid, $2 dir: TERM (then KILL) pid, only if it is the Orthanc of dir
  local pid="$1" dir="$2" i
  if ! owns "$pid" "$dir"; then
    log "pid $pid is not running the Orthanc of $dir (stale pid file): nothing to stop"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    log "pid $pid ignored SIGTERM for 15 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
  fi
  alive "$pid" && die "pid $pid is still running"
  log "stopped Orthanc pid $pid"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

check_port_free() {  # $1 port: refuse to start on a port someone else already listens on
  python3 - "$1" <<'PY' || die "port $1 is already in use (another Orthanc/test?); pick another or use 0"
import socket, sys
for host in ("127.0.0.1", "0.0.0.0"):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, int(sys.argv[1])))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
PY
}

# ---------------------------------------------------------------- config
json_str() {  # $1 what, $2 value: refuse characters that would need JSON escaping
  case "$2" in *'"'* | *\\* | *$'\n'*) die "$1 must not contain quotes, backslashes or newlines";; esac
}

write_config() {  # uses globals
  local plugin mods="" first=1 m ae hp host port auth_users="{}" auth=false i
  local -A seen=()
  local list=()
  plugin="$(dicomweb_plugin)"
  # DicomModalities: "AE" : [ "AE", "host", port ] (key = symbolic name = AE here).
  # Walk the list backwards so that a later entry for the same AE wins.
  read -r -a list <<< "$MODALITIES"
  for (( i=${#list[@]}-1; i>=0; i-- )); do
    m="${list[$i]}"; ae="${m%@*}"; hp="${m#*@}"; host="${hp%:*}"; port="${hp##*:}"
    [[ "$m" == *@*:* && "$port" =~ ^[0-9]+$ && "$ae" =~ ^[A-Za-z0-9_.-]{1,16}$ \
       && "$host" =~ ^[A-Za-z0-9_.:-]+$ ]] \
      || die "bad --modality '$m' (want AE@HOST:PORT, AE of 1-16 letters/digits/._-)"
    [ -z "${seen[$ae]:-}" ] || continue
    seen[$ae]=1
    [ $first -eq 1 ] || mods+=","
    mods+=$'\n'"    \"$ae\" : [ \"$ae\", \"$host\", $port ]"; first=0
  done
  if [ -n "$HTTP_USER" ]; then
    [[ "$HTTP_USER" == ?*:* ]] || die "--user wants USER:PASS"
    json_str "--user" "$HTTP_USER"
    auth=true; auth_users="{ \"${HTTP_USER%%:*}\" : \"${HTTP_USER#*:}\" }"
  fi
  cat > "$DIR/orthanc.json" <<EOF
{
  "Name" : "$NAME",                   // unique: wait_ready checks that *this* server answers
  "StorageDirectory" : "$DIR/storage",
  "IndexDirectory"   : "$DIR/storage",
  "StorageCompression" : false,
  "MaximumStorageCacheSize" : 128,
  "Plugins" : [ "$plugin" ],
  "ConcurrentJobs" : 2,
  "SaveJobs" : false,
  "StableAge" : 5,
  "OverwriteInstances" : true,
  "DefaultEncoding" : "$ENCODING",      // also the SpecificCharacterSet of DICOMweb answers

  // ---- HTTP (REST + DICOMweb). No bind-address option exists: listens on all
  // interfaces, RemoteAccessAllowed=false rejects everything but loopback.
  "HttpServerEnabled" : true,
  "HttpPort" : $HTTP_PORT,
  "RemoteAccessAllowed" : false,
  "AuthenticationEnabled" : $auth,
  "RegisteredUsers" : $auth_users,
  "HttpCompressionEnabled" : false,   // no gzip of JSON answers: deterministic benchmarks
  "KeepAlive" : true,
  "TcpNoDelay" : true,
  "HttpThreadsCount" : 50,
  "HttpTimeout" : 60,                 // Orthanc as HTTP client (peers), seconds
  "HttpRequestTimeout" : 60,          // HTTP server socket timeouts (SO_RCVTIMEO/SO_SNDTIMEO)
  "WebDavEnabled" : false,
  "OrthancExplorerEnabled" : true,

  // ---- DICOM (DIMSE)
  "DicomServerEnabled" : true,
  "DicomAet" : "$AET",
  "DicomPort" : $DICOM_PORT,
  "DicomCheckCalledAet" : true,       // SCUs must call us by our AE title (like real PACS)
  "DicomCheckModalityHost" : false,
  "DicomAlwaysAllowEcho" : true,
  "DicomAlwaysAllowStore" : true,
  "DicomAlwaysAllowFind" : true,      // any calling AE may C-FIND ...
  "DicomAlwaysAllowGet" : true,       // ... C-GET (needed: default false = only known AEs)
  "DicomAlwaysAllowMove" : true,      // ... and C-MOVE (destination must still be listed below)
  "UnknownSopClassAccepted" : true,
  "DicomScpTimeout" : 30,
  "DicomScuTimeout" : 30,
  "DicomThreadsCount" : 4,
  "MaximumPduLength" : $PDU,
  "DicomAssociationCloseDelay" : 0,
  "SynchronousCMove" : true,
  "StorageAccessOnFind" : "Always",
  "DicomModalities" : {$mods
  },

  // ---- DICOMweb plugin (QIDO-RS, WADO-RS, STOW-RS, WADO-URI)
  "DicomWeb" : {
    "Enable" : true,
    "Root" : "/dicom-web/",
    "EnableWado" : true,
    "WadoRoot" : "/wado",
    "Ssl" : false,
    // "Host" deliberately unset: BulkDataURI/RetrieveURL follow the request's Host header
    "StudiesMetadata" : "$DW_METADATA",
    "SeriesMetadata" : "$DW_METADATA"
  }
}
EOF
}

# ---------------------------------------------------------------- launch / wait
launch() {  # start Orthanc detached; sets PID
  local i
  rm -f "$DIR/orthanc.pid" "$DIR/orthanc.pid.tmp"
  # setsid: own session and process group, so the caller's Ctrl-C / job control does not hit
  # it. The inner sh writes its own PID and then execs Orthanc, so the PID file holds
  # Orthanc's PID even if setsid has to fork. DCMTK inside Orthanc reads TCP_NODELAY.
  # shellcheck disable=SC2016  # $$ and $1.. are for the inner sh
  TCP_NODELAY="$NODELAY" setsid sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1" && exec "$2" "$3"' \
    orthanc-launch "$DIR/orthanc.pid" "$ORTHANC_BIN" "$DIR/orthanc.json" \
    > "$DIR/orthanc.log" 2>&1 < /dev/null &
  for i in $(seq 1 100); do
    [ -s "$DIR/orthanc.pid" ] && break
    sleep 0.05
  done
  [ -s "$DIR/orthanc.pid" ] || die "Orthanc launcher did not write $DIR/orthanc.pid"
  PID="$(cat "$DIR/orthanc.pid")"
  STARTED_PID="$PID"; LAUNCHED=1
}

wait_ready() {  # returns 0 ready, 1 Orthanc exited, 2 timeout
  local timeout="${ORTHANC_START_TIMEOUT:-60}" t0 auth=()
  [ -z "$HTTP_USER" ] || auth=(-u "$HTTP_USER")
  t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$timeout" ]; do
    alive "$PID" || return 1
    # ready = OUR server (unique Name) answers /system, DICOMweb answers, DICOM port accepts
    if curl -sf --max-time 2 "${auth[@]}" "http://127.0.0.1:$HTTP_PORT/system" 2>/dev/null \
         | grep -qF "\"$NAME\"" \
       && curl -sf --max-time 5 -o /dev/null "${auth[@]}" \
            "http://127.0.0.1:$HTTP_PORT/dicom-web/studies?limit=1" \
       && (exec 3<>"/dev/tcp/127.0.0.1/$DICOM_PORT") 2>/dev/null \
       && owns "$PID" "$DIR"; then
      return 0
    fi
    sleep 0.2
  done
  return 2
}

on_start_exit() {  # EXIT trap of start: never leave a half-started Orthanc behind
  local rc=$?
  if [ $rc -ne 0 ] && [ -n "$STARTED_PID" ]; then
    log "start failed: stopping Orthanc pid $STARTED_PID (log kept: $DIR/orthanc.log)"
    kill_own "$STARTED_PID" "$DIR" || true
    rm -f "$DIR/orthanc.pid"
  elif [ $rc -ne 0 ] && [ "$CREATED_DIR" = 1 ] && [ "$LAUNCHED" = 0 ]; then
    rm -rf -- "$DIR"   # our own fresh mktemp dir, nothing in it worth keeping
  fi
  exit $rc
}

# ---------------------------------------------------------------- load
pick_python() {
  if [ -n "${ORTHANC_PYTHON:-}" ]; then
    echo "$ORTHANC_PYTHON"
  elif [ -x "$PROJECT_ROOT/.venv/bin/python" ]; then
    echo "$PROJECT_ROOT/.venv/bin/python"
  else
    command -v python3
  fi
}

check_python() {  # before starting anything: can the loader run?
  local py
  py="$(pick_python)" || die "no python3 for --load (set ORTHANC_PYTHON)"
  "$py" -c 'import numpy, pydicom, requests' 2>/dev/null \
    || die "$py lacks numpy/pydicom/requests (pip install -e '.[test]', or set ORTHANC_PYTHON)"
}

load_data() {  # $@ = sets
  local py args=() s
  py="$(pick_python)"
  for s in "$@"; do args+=(--set "$s"); done
  [ -z "$HTTP_USER" ] || args+=(--user "$HTTP_USER")
  log "loading: $* (with $py)"
  "$py" "$HERE/sample_data.py" --orthanc "http://127.0.0.1:$HTTP_PORT" "${args[@]}" \
    --manifest "$DIR/manifest.json" >&2 || die "loading $* failed (see above)"
}

# ---------------------------------------------------------------- commands
cmd_start() {
  DIR="${ORTHANC_DIR:-}"; HTTP_PORT="${ORTHANC_HTTP_PORT:-0}"; DICOM_PORT="${ORTHANC_DICOM_PORT:-0}"
  AET="${ORTHANC_AET:-ORTHANC}"; PDU="${ORTHANC_PDU:-16384}"
  # STORESCP@127.0.0.1:11113 is always known (C-MOVE target for dcmtk storescp / tests);
  # --modality / ORTHANC_MODALITIES add more (the same AE given again overrides it).
  MODALITIES="STORESCP@127.0.0.1:11113 ${ORTHANC_MODALITIES:-}"
  HTTP_USER="${ORTHANC_USER:-}"; DW_METADATA="${ORTHANC_DW_METADATA:-Full}"
  ENCODING="${ORTHANC_DEFAULT_ENCODING:-Utf8}"
  NODELAY="${ORTHANC_TCP_NODELAY:-1}"
  STARTED_PID=""; PID=""; CREATED_DIR=0; LAUNCHED=0
  local loads=() fg=0 l auto_ports=0 attempt rc
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir|--http-port|--dicom-port|--aet|--modality|--pdu|--user|--studies-metadata|--load\
      |--default-encoding)
        [ $# -ge 2 ] || die "$1 needs a value";;
    esac
    case "$1" in
      --dir) DIR="$2"; shift 2;;
      --http-port) HTTP_PORT="$2"; shift 2;;
      --dicom-port) DICOM_PORT="$2"; shift 2;;
      --aet) AET="$2"; shift 2;;
      --modality) MODALITIES="$MODALITIES $2"; shift 2;;
      --pdu) PDU="$2"; shift 2;;
      --user) HTTP_USER="$2"; shift 2;;
      --studies-metadata) DW_METADATA="$2"; shift 2;;
      --default-encoding) ENCODING="$2"; shift 2;;
      --load) loads+=("$2"); shift 2;;
      --foreground) fg=1; shift;;
      --nagle) NODELAY=0; shift;;
      *) die "unknown option $1 (see: $0 help)";;
    esac
  done
  # validate before touching anything
  for l in "${loads[@]}"; do
    [[ " $LOAD_SETS " == *" $l "* ]] || die "unknown --load '$l' (one of: $LOAD_SETS)"
  done
  [[ "$HTTP_PORT" =~ ^[0-9]+$ && "$DICOM_PORT" =~ ^[0-9]+$ ]] || die "ports must be numbers"
  [[ "$AET" =~ ^[A-Za-z0-9_.-]{1,16}$ ]] || die "bad --aet '$AET' (1-16 letters/digits/._-)"
  if ! [[ "$PDU" =~ ^[0-9]+$ ]] || [ "$PDU" -lt 4096 ] || [ "$PDU" -gt 131072 ]; then
    die "--pdu must be 4096..131072"
  fi
  case "$DW_METADATA" in Full|MainDicomTags|Extrapolate) ;; *) die "bad --studies-metadata";; esac
  [[ "$ENCODING" =~ ^[A-Za-z0-9]+$ ]] || die "bad --default-encoding '$ENCODING'"
  [[ "$NODELAY" =~ ^[01]$ ]] || die "ORTHANC_TCP_NODELAY must be 0 or 1"
  [ "$fg" -eq 0 ] || [ ${#loads[@]} -eq 0 ] || die "--load cannot be used with --foreground"

  ensure_packages
  [ ${#loads[@]} -eq 0 ] || check_python
  [ -x "$ORTHANC_BIN" ] || die "$ORTHANC_BIN not found (package orthanc)"

  [ "$HTTP_PORT" = 0 ] || check_port_free "$HTTP_PORT"
  [ "$DICOM_PORT" = 0 ] || check_port_free "$DICOM_PORT"
  if [ -z "$DIR" ]; then
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/orthanc-test.XXXXXX")"; CREATED_DIR=1
  elif [ -d "$DIR" ] && [ ! -e "$DIR/$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists, is not empty and was not made by this script: use another --dir"
  fi
  mkdir -p "$DIR/storage"; DIR="$(cd "$DIR" && pwd)"
  trap on_start_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  [[ "$DIR" =~ ^[A-Za-z0-9_./-]+$ ]] || die "state dir path '$DIR' has unusual characters"
  touch "$DIR/$MARKER"
  if [ -f "$DIR/orthanc.pid" ] && owns "$(cat "$DIR/orthanc.pid")" "$DIR"; then
    die "already running in $DIR (pid $(cat "$DIR/orthanc.pid")); stop it first"
  fi
  if [ "$HTTP_PORT" = 0 ] || [ "$DICOM_PORT" = 0 ]; then auto_ports=1; fi

  if [ $fg -eq 1 ]; then
    [ "$HTTP_PORT" != 0 ] || HTTP_PORT="$(free_port)"
    [ "$DICOM_PORT" != 0 ] || DICOM_PORT="$(free_port)"
    NAME="ncpeh-orthanc-$(basename "$DIR")-$$-$RANDOM$RANDOM"
    write_config
    log "foreground: http://127.0.0.1:$HTTP_PORT  DICOM $AET@127.0.0.1:$DICOM_PORT  ($DIR)"
    TCP_NODELAY="$NODELAY" exec "$ORTHANC_BIN" "$DIR/orthanc.json"
  fi

  local want_http="$HTTP_PORT" want_dicom="$DICOM_PORT"
  for attempt in 1 2 3; do
    if [ "$want_http" = 0 ]; then HTTP_PORT="$(free_port)"; else check_port_free "$HTTP_PORT"; fi
    if [ "$want_dicom" = 0 ]; then
      DICOM_PORT="$(free_port)"
      [ "$DICOM_PORT" != "$HTTP_PORT" ] || DICOM_PORT="$(free_port)"
    else
      check_port_free "$DICOM_PORT"
    fi
    NAME="ncpeh-orthanc-$(basename "$DIR")-$$-$RANDOM$RANDOM"
    write_config
    launch
    rc=0; wait_ready || rc=$?
    [ $rc -eq 0 ] && break
    if [ $rc -eq 2 ]; then
      tail -40 "$DIR/orthanc.log" >&2
      die "Orthanc (pid $PID) did not answer within ${ORTHANC_START_TIMEOUT:-60} s"
    fi
    # exited during startup: most likely a port grabbed by someone else after free_port
    STARTED_PID=""; rm -f "$DIR/orthanc.pid"
    if [ $auto_ports -eq 1 ] && [ $attempt -lt 3 ]; then
      log "Orthanc exited during startup (attempt $attempt), retrying on other ports:"
      tail -5 "$DIR/orthanc.log" >&2
      continue
    fi
    tail -40 "$DIR/orthanc.log" >&2
    die "Orthanc exited during startup"
  done

  if [ ${#loads[@]} -gt 0 ]; then
    local uniq=() listed=" "
    for l in "${loads[@]}"; do
      [[ "$listed" == *" $l "* ]] || { uniq+=("$l"); listed+="$l "; }
    done
    load_data "${uniq[@]}"
  fi

  local ver dwver auth=() mod_list=()
  read -r -a mod_list <<< "$MODALITIES"
  [ -z "$HTTP_USER" ] || auth=(-u "$HTTP_USER")
  ver="$(curl -sf "${auth[@]}" "http://127.0.0.1:$HTTP_PORT/system" \
         | python3 -c 'import json,sys; print(json.load(sys.stdin)["Version"])')" || ver="?"
  dwver="$(curl -sf "${auth[@]}" "http://127.0.0.1:$HTTP_PORT/plugins/dicom-web" \
         | python3 -c 'import json,sys; print(json.load(sys.stdin)["Version"])' 2>/dev/null)" \
    || dwver="?"
  {
    echo "ORTHANC_DIR=$DIR"
    echo "ORTHANC_PID=$PID"
    echo "ORTHANC_NAME=$NAME"
    echo "ORTHANC_URL=http://127.0.0.1:$HTTP_PORT"
    echo "DICOMWEB_ROOT=http://127.0.0.1:$HTTP_PORT/dicom-web"
    echo "ORTHANC_HOST=127.0.0.1"
    echo "ORTHANC_HTTP_PORT=$HTTP_PORT"
    echo "ORTHANC_DICOM_PORT=$DICOM_PORT"
    echo "ORTHANC_AET=$AET"
    echo "ORTHANC_MODALITIES=\"${mod_list[*]}\""
    echo "ORTHANC_TCP_NODELAY=$NODELAY"
    echo "ORTHANC_DEFAULT_ENCODING=$ENCODING"
    echo "ORTHANC_VERSION=$ver"
    echo "ORTHANC_DICOMWEB_VERSION=$dwver"
    [ -z "$HTTP_USER" ] || echo "ORTHANC_USER=$(printf '%q' "$HTTP_USER")"
    [ ${#loads[@]} -eq 0 ] || echo "ORTHANC_MANIFEST=$DIR/manifest.json"
  } > "$DIR/env"
  STARTED_PID=""   # success: the EXIT trap must not stop it any more
  trap - EXIT INT TERM
  log "Orthanc $ver (DICOMweb plugin $dwver) pid $PID, http://127.0.0.1:$HTTP_PORT," \
      "DICOM $AET@127.0.0.1:$DICOM_PORT, state in $DIR"
  sed 's/^/export /' "$DIR/env"
}

resolve_dir() {  # $@ = args; prints the --dir (or ORTHANC_DIR), normalised
  local dir="${ORTHANC_DIR:-}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir="$2"; shift 2;;
      *) shift;;
    esac
  done
  [ -n "$dir" ] || die "needs --dir DIR (or ORTHANC_DIR)"
  if [ -d "$dir" ]; then dir="$(cd "$dir" && pwd)"; fi
  echo "$dir"
}

cmd_stop() {
  local dir purge=0 a
  for a in "$@"; do
    case "$a" in --purge) purge=1;; esac
  done
  dir="$(resolve_dir "$@")"
  [ -d "$dir" ] || { log "no state dir $dir: nothing to stop"; return 0; }
  if [ -f "$dir/orthanc.pid" ]; then
    kill_own "$(cat "$dir/orthanc.pid")" "$dir"
    rm -f "$dir/orthanc.pid"
  else
    log "no pid file in $dir: nothing to stop"
  fi
  if [ $purge -eq 1 ]; then
    [ -e "$dir/$MARKER" ] || die "not purging $dir: it was not made by this script"
    rm -rf -- "$dir"
    log "removed $dir"
  fi
}

cmd_status() {
  local dir
  dir="$(resolve_dir "$@")"
  if [ -f "$dir/orthanc.pid" ] && owns "$(cat "$dir/orthanc.pid")" "$dir"; then
    echo "running pid $(cat "$dir/orthanc.pid")"
    cat "$dir/env" 2>/dev/null || true
    return 0
  fi
  echo "not running"
  return 1
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

case "${1:-}" in
  start) shift; cmd_start "$@";;
  stop) shift; cmd_stop "$@";;
  status) shift; cmd_status "$@";;
  help|-h|--help) usage;;
  *) usage >&2; exit 2;;
esac
