#!/usr/bin/env bash
# dcmqrscp.sh - start / stop dcmtk's dcmqrscp, a second, independent DIMSE-only PACS
# (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET), on loopback for the ncpeh-dicomweb tests.
# No Docker, no systemd: dcmqrscp runs as a plain background process; its config, storage
# area, log, PID file and env file live in one state directory.
#
# Usage
#   scripts/dcmqrscp.sh start --dir DIR [--port N] [--aet AET] [--move-dest AE@HOST:PORT]...
#                             [--load-dir DIR_OF_DCM_FILES] [--pdu N]
#       write DIR/dcmqrscp.cfg, start /usr/bin/dcmqrscp, wait until it answers a C-ECHO,
#       write DIR/pid and DIR/env, then C-STORE every file under --load-dir into it
#       (/usr/bin/storescu) and check with /usr/bin/findscu that the studies are there.
#       Prints `export KEY=VALUE` lines for eval (the same keys as DIR/env).
#         --port N      DICOM port; 0 or absent: a free one
#         --aet AET     dcmqrscp's AE title (default DCMQRSCP)
#         --move-dest   a C-MOVE destination (HostTable entry); repeatable. dcmqrscp moves
#                       only to AEs listed in its config.
#         --pdu N       MaxPDUSize, 4096..131072 (default 65536)
#   scripts/dcmqrscp.sh stop --dir DIR [--purge]
#       stop only the process whose PID is in DIR/pid (and only if it is a dcmqrscp running
#       DIR's config); --purge then removes DIR (only a DIR this script made).
#   scripts/dcmqrscp.sh status --dir DIR     exit 0 and print DIR/env if running
#
# DIR/env: DCMQRSCP_DIR DCMQRSCP_PID DCMQRSCP_HOST=127.0.0.1 DCMQRSCP_PORT DCMQRSCP_AET
#          DCMQRSCP_CONFIG DCMQRSCP_LOG
#
# Notes:
# * Any calling AE may associate: the AETable's peer list is ANY and its access RW (C-STORE,
#   C-FIND, C-GET, C-MOVE). C-GET is on by default in dcmqrscp >= 3.6 (--disable-get turns it
#   off); C-MOVE destinations must be in the HostTable (--move-dest).
# * dcmqrscp's C-FIND is hierarchical only (PS3.4 C.4.1.2.1): below the STUDY level the
#   unique keys of the levels above must hold a single UID.
# * TCP_NODELAY=1 is put in dcmqrscp's environment (dcmtk honours it), or every DIMSE exchange
#   stalls ~40 ms on delayed ACKs; the dcmtk tools used here get it too.
# * Stored instances are written bit-preserving (+B): what a C-GET / C-MOVE sends back is the
#   data set exactly as it was received.
# * The dcmtk tools are called as /usr/bin/...: pip's pynetdicom installs Python apps with the
#   same names (storescu, findscu, ...) that may come first on PATH.
set -euo pipefail

DCMQRSCP=/usr/bin/dcmqrscp
STORESCU=/usr/bin/storescu
FINDSCU=/usr/bin/findscu
ECHOSCU=/usr/bin/echoscu
DCMDUMP=/usr/bin/dcmdump
MARKER=".dcmqrscp-sh-state"   # marks a state dir made by this script (stop --purge needs it)
START_TIMEOUT="${DCMQRSCP_START_TIMEOUT:-30}"
export TCP_NODELAY=1          # dcmqrscp and every dcmtk tool started from here

die() { echo "dcmqrscp.sh: error: $*" >&2; exit 1; }
log() { echo "dcmqrscp.sh: $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; }

# ---------------------------------------------------------------- processes
alive() {  # $1 pid: running and not a zombie
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != "Z" ]
}

owns() {  # $1 pid, $2 dir: true if pid is a dcmqrscp running the config of dir
  local pid="$1" cfg arg is_qr=1 has_cfg=1
  alive "$pid" || return 1
  cfg="$(readlink -f -- "$2/dcmqrscp.cfg" 2>/dev/null)" || return 1
  while IFS= read -r -d '' arg; do
    case "$arg" in *dcmqrscp) is_qr=0 ;; esac
    [ "$(readlink -f -- "$arg" 2>/dev/null || true)" = "$cfg" ] && has_cfg=0
  done < "/proc/$pid/cmdline"
  [ $is_qr -eq 0 ] && [ $has_cfg -eq 0 ]
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

answers_echo() {  # the port accepts associations and dcmqrscp answers a C-ECHO
  "$ECHOSCU" -aet DCMQRSCP-SH -aec "$AET" 127.0.0.1 "$PORT" >/dev/null 2>&1
}

# ---------------------------------------------------------------- config
write_config() {  # uses globals DIR PORT AET PDU MOVE_DESTS
  local hosts="" m ae hp host port n=0
  for m in "${MOVE_DESTS[@]}"; do
    ae="${m%@*}"; hp="${m#*@}"; host="${hp%:*}"; port="${hp##*:}"
    [[ "$m" == *@*:* && "$port" =~ ^[0-9]+$ && "$ae" =~ ^[A-Za-z0-9_.-]{1,16}$ \
       && "$host" =~ ^[A-Za-z0-9_.:-]+$ ]] \
      || die "bad --move-dest '$m' (want AE@HOST:PORT, AE of 1-16 letters/digits/._-)"
    n=$((n + 1))
    hosts+="dest$n = ($ae, $host, $port)"$'\n'
  done
  mkdir -p "$DIR/db/$AET"
  cat > "$DIR/dcmqrscp.cfg" <<EOF
# written by scripts/dcmqrscp.sh; see /usr/share/doc/dcmtk/dcmqrcnf.txt
NetworkTCPPort  = $PORT
MaxPDUSize      = $PDU
MaxAssociations = 16

HostTable BEGIN
${hosts}HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
# AE title   storage dir       access  quota (max studies, max bytes per study)   peers
$AET   $DIR/db/$AET   RW   (500, 1024mb)   ANY
AETable END
EOF
}

write_env() {
  local env="$DIR/env"
  {
    echo "DCMQRSCP_DIR=$DIR"
    echo "DCMQRSCP_PID=$PID"
    echo "DCMQRSCP_HOST=127.0.0.1"
    echo "DCMQRSCP_PORT=$PORT"
    echo "DCMQRSCP_AET=$AET"
    echo "DCMQRSCP_CONFIG=$DIR/dcmqrscp.cfg"
    echo "DCMQRSCP_LOG=$DIR/dcmqrscp.log"
  } > "$env.tmp"
  mv "$env.tmp" "$env"
}

# ---------------------------------------------------------------- data
study_count() {  # studies dcmqrscp answers a STUDY-level C-FIND with
  "$FINDSCU" -v -S -aec "$AET" 127.0.0.1 "$PORT" \
    -k QueryRetrieveLevel=STUDY -k StudyInstanceUID 2>&1 \
    | grep -c 'Find Response: .*(Pending)' || true
}

load_dir() {  # $1 directory of DICOM files
  local src="$1" files stored expected found
  [ -d "$src" ] || die "--load-dir $src is not a directory"
  files="$(find "$src" -type f | wc -l)"
  [ "$files" -gt 0 ] || die "--load-dir $src holds no files"
  log "loading $files files from $src"
  "$STORESCU" -aec "$AET" -aet DCMQRSCP-LOAD +r +sd 127.0.0.1 "$PORT" "$src" \
    >>"$DIR/load.log" 2>&1 || die "storescu failed (exit $?): see $DIR/load.log"
  if grep -q '^[EF]:' "$DIR/load.log"; then
    die "storescu reported errors: $(grep -m3 '^[EF]:' "$DIR/load.log" | tr '\n' ' ')"
  fi
  stored="$(find "$DIR/db/$AET" -type f ! -name index.dat | wc -l)"
  [ "$stored" -ge "$files" ] || die "dcmqrscp stored $stored of $files files: see $DIR/dcmqrscp.log"
  expected="$("$DCMDUMP" -q +r +sd +P 0020,000d "$src" | grep -o '^(0020,000d) UI \[[^]]*' \
    | sort -u | wc -l)"
  found="$(study_count)"
  [ "$found" -ge "$expected" ] \
    || die "findscu finds $found studies, the files hold $expected: see $DIR/dcmqrscp.log"
  log "loaded $files files; findscu finds $found studies"
}

# ---------------------------------------------------------------- commands
cmd_start() {
  DIR="" PORT=0 AET=DCMQRSCP PDU=65536 LOAD=""
  MOVE_DESTS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
      --port) PORT="${2:?--port needs a value}"; shift 2 ;;
      --aet) AET="${2:?--aet needs a value}"; shift 2 ;;
      --move-dest) MOVE_DESTS+=("${2:?--move-dest needs a value}"); shift 2 ;;
      --load-dir) LOAD="${2:?--load-dir needs a value}"; shift 2 ;;
      --pdu) PDU="${2:?--pdu needs a value}"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) die "start: unknown option $1" ;;
    esac
  done
  [ -n "$DIR" ] || die "start: --dir DIR is required"
  [ -x "$DCMQRSCP" ] || die "$DCMQRSCP not found: apt-get install dcmtk"
  [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -le 65535 ]] || die "--port must be 0..65535"
  [[ "$PDU" =~ ^[0-9]+$ && "$PDU" -ge 4096 && "$PDU" -le 131072 ]] || die "--pdu: 4096..131072"
  [[ "$AET" =~ ^[A-Za-z0-9_.-]{1,16}$ ]] || die "--aet: 1-16 letters, digits, ._-"
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  case "$DIR" in *[[:space:]\"]*) die "--dir must not contain spaces or quotes" ;; esac
  if [ -f "$DIR/pid" ] && owns "$(cat "$DIR/pid")" "$DIR"; then
    die "a dcmqrscp of $DIR is already running (pid $(cat "$DIR/pid")): stop it first"
  fi
  touch "$DIR/$MARKER"
  [ "$PORT" -ne 0 ] || PORT="$(free_port)"
  write_config
  # -dhl: no reverse DNS per association; +B: store instances exactly as received.
  "$DCMQRSCP" -c "$DIR/dcmqrscp.cfg" -dhl +B "$PORT" \
    >"$DIR/dcmqrscp.log" 2>&1 </dev/null &
  PID=$!
  echo "$PID" > "$DIR/pid"
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers_echo; do
    if ! alive "$PID"; then
      die "dcmqrscp exited at start: $(tail -n 5 "$DIR/dcmqrscp.log" | tr '\n' ' ')"
    fi
    if [ $SECONDS -ge $deadline ]; then
      kill -TERM "$PID" 2>/dev/null || true
      die "dcmqrscp did not answer a C-ECHO on port $PORT within ${START_TIMEOUT}s"
    fi
    sleep 0.1
  done
  write_env
  log "dcmqrscp $AET@127.0.0.1:$PORT running, pid $PID, state in $DIR"
  if [ -n "$LOAD" ]; then
    # a subshell: a failed load (die) stops the server instead of leaving it running
    (load_dir "$LOAD") || { stop_pid "$PID" "$DIR"; rm -f "$DIR/pid"; exit 1; }
  fi
  sed -e 's/^/export /' "$DIR/env"
}

stop_pid() {  # $1 pid, $2 dir
  local pid="$1" dir="$2" child _
  if ! owns "$pid" "$dir"; then
    log "pid $pid is not a dcmqrscp running $dir/dcmqrscp.cfg (stale pid file): nothing to stop"
    return 0
  fi
  # dcmqrscp forks one child per association: end those of this server too.
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null || true); do
    if owns "$child" "$dir"; then kill -TERM "$child" 2>/dev/null || true; fi
  done
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    log "pid $pid ignored SIGTERM for 5 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
  fi
  alive "$pid" && die "pid $pid is still running"
  log "stopped dcmqrscp pid $pid"
}

cmd_stop() {
  local dir="" purge=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
      --purge) purge=1; shift ;;
      *) die "stop: unknown option $1" ;;
    esac
  done
  [ -n "$dir" ] || die "stop: --dir DIR is required"
  [ -d "$dir" ] || die "stop: $dir is not a directory"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/pid" ]; then
    stop_pid "$(cat "$dir/pid")" "$dir"
    rm -f "$dir/pid"
  else
    log "no $dir/pid: nothing to stop"
  fi
  if [ $purge -eq 1 ]; then
    [ -f "$dir/$MARKER" ] || die "--purge: $dir was not made by this script ($MARKER missing)"
    rm -rf -- "$dir"
    log "removed $dir"
  fi
}

cmd_status() {
  local dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
      *) die "status: unknown option $1" ;;
    esac
  done
  [ -n "$dir" ] || die "status: --dir DIR is required"
  if ! { [ -f "$dir/pid" ] && owns "$(cat "$dir/pid")" "$dir"; }; then
    log "not running"
    exit 1
  fi
  cat "$dir/env"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  help | -h | --help) usage ;;
  *) usage; exit 2 ;;
esac
