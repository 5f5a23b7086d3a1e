#!/usr/bin/env bash
# rsyslog.sh - start / stop a REAL rsyslogd on loopback as the audit repository (IHE ATNA Audit
# Record Repository, ITI-20) for the ncpeh-dicomweb tests: syslog over TCP (RFC 6587) and, if
# asked, over TLS (RFC 5425), everything it receives written to files in one directory.
#
# Usage
#   scripts/rsyslog.sh start  DIR [--port N] [--tls-port N]
#                                 [--tls-ca FILE --tls-cert FILE --tls-key FILE]
#                                 [--tls-auth anon|x509/certvalid]
#                             start (no-op if it answers); prints `export K=V`
#   scripts/rsyslog.sh stop   DIR [--purge]    stop it (--purge: also delete what it received)
#   scripts/rsyslog.sh status DIR              exit 0 and print the env if it runs
#
# On success `start` writes KEY=VALUE lines to DIR/env (and prints them as `export` lines):
#   NCPEH_RSYSLOG_PORT       plain TCP port on 127.0.0.1 (a free one unless --port)
#   NCPEH_RSYSLOG_TLS_PORT   TLS port on 127.0.0.1 (empty without --tls-*)
#   NCPEH_RSYSLOG_RECEIVED   DIR/received.log: the MSG of each message received, one per line
#   NCPEH_RSYSLOG_HEADERS    DIR/received-headers.log: "PRI APP-NAME PROCID MSGID HOSTNAME
#                            TIMESTAMP" of each message, as rsyslog parsed them, one per line
#   NCPEH_RSYSLOG_PID_FILE, NCPEH_RSYSLOG_TLS_CA/_CERT/_KEY/_AUTH (a restart reuses all of it)
# e.g.  eval "$(scripts/rsyslog.sh start /tmp/arr)"; ...; scripts/rsyslog.sh stop /tmp/arr
#
# Notes:
# * Needs Debian's `rsyslog`, and `rsyslog-openssl` for TLS (scripts/install-deps.sh installs
#   both). No systemd: `rsyslogd -n -f DIR/rsyslog.conf -i DIR/rsyslogd.pid`, its own config
#   only (no /etc/rsyslog.conf, no /dev/log); its internal messages go to DIR/internal.log.
# * Runs as whoever calls it, root or not: nothing outside DIR is touched, no privileged port.
# * A restart (stop, then start DIR again) listens on the same ports, so a client configured
#   with them finds it back; received.log keeps growing across restarts.
# * TLS: the server presents --tls-cert; --tls-auth x509/certvalid (the default with TLS)
#   requires a client certificate issued by --tls-ca, as ATNA's node authentication does.
set -euo pipefail

die() { echo "rsyslog.sh: error: $*" >&2; exit 1; }
log() { echo "rsyslog.sh: $*" >&2; }

usage() { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

rsyslogd_bin() {
  local found
  found="$(command -v rsyslogd 2>/dev/null || true)"
  [ -n "$found" ] || { [ -x /usr/sbin/rsyslogd ] && found=/usr/sbin/rsyslogd; }
  [ -n "$found" ] || die "no rsyslogd: install Debian's rsyslog (make deps)"
  echo "$found"
}

has_ossl() {
  local dir
  for dir in /usr/lib/*/rsyslog /usr/lib/rsyslog /usr/lib64/rsyslog; do
    [ -f "$dir/lmnsd_ossl.so" ] && return 0
  done
  return 1
}

read_env() {  # DIR -> sets the NCPEH_RSYSLOG_* variables from DIR/env
  [ -f "$1/env" ] || die "no $1/env: was it started with '$0 start $1'?"
  local key value
  while IFS='=' read -r key value; do
    case "$key" in NCPEH_RSYSLOG_*) printf -v "$key" '%s' "$value" ;; esac
  done < "$1/env"
}

running() {  # pid file -> 0 if that rsyslogd runs
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

answers() {  # port -> 0 if something accepts TCP connections on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

listening() {  # port-file wanted-port -> 0 once rsyslogd listens there
  if [ "$2" = "0" ]; then [ -s "$1" ] && answers "$(cat "$1")"; else answers "$2"; fi
}

write_config() {  # dir port tls_port ca cert key auth
  local dir="$1" port="$2" tls_port="$3" ca="$4" cert="$5" key="$6" auth="$7"
  local tls_global="" tls_input=""
  if [ -n "$ca" ]; then
    tls_global="defaultNetstreamDriverCAFile=\"$ca\" defaultNetstreamDriverCertFile=\"$cert\"
       defaultNetstreamDriverKeyFile=\"$key\""
    tls_input="input(type=\"imtcp\" port=\"$tls_port\" listenPortFileName=\"$dir/tls-port\"
      ruleset=\"audit\" streamDriver.name=\"ossl\" streamDriver.mode=\"1\"
      streamDriver.authMode=\"$auth\")"
  fi
  cat >"$dir/rsyslog.conf" <<EOF
# Written by scripts/rsyslog.sh: an audit repository for tests, on loopback.
global(workDirectory="$dir" net.enableDNS="off" maxMessageSize="1m"
       $tls_global)
# On SIGTERM, write out what was received before exiting.
main_queue(queue.timeoutShutdown="10000" queue.timeoutActionCompletion="10000")
module(load="imtcp" maxSessions="1000")
input(type="imtcp" port="$port" listenPortFileName="$dir/port" ruleset="audit")
$tls_input
template(name="ncpeh_msg" type="string" string="%msg%\n")
template(name="ncpeh_headers" type="string"
         string="%pri% %app-name% %procid% %msgid% %hostname% %timereported:::date-rfc3339%\n")
ruleset(name="audit") {
  action(type="omfile" file="$dir/received.log" template="ncpeh_msg")
  action(type="omfile" file="$dir/received-headers.log" template="ncpeh_headers")
}
# rsyslogd's own messages
*.* action(type="omfile" file="$dir/internal.log")
EOF
}

cmd_start() {
  local dir="" port="" tls_port="" ca="" cert="" key="" auth=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --tls-port) tls_port="$2"; shift 2 ;;
      --tls-ca) ca="$2"; shift 2 ;;
      --tls-cert) cert="$2"; shift 2 ;;
      --tls-key) key="$2"; shift 2 ;;
      --tls-auth) auth="$2"; shift 2 ;;
      -*) die "start: unknown option $1" ;;
      *) [ -z "$dir" ] || die "start: one DIR only"; dir="$1"; shift ;;
    esac
  done
  [ -n "$dir" ] || die "start: DIR is required"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local bin; bin="$(rsyslogd_bin)"

  if [ -f "$dir/env" ]; then  # a restart: the same ports and certificates unless told
    read_env "$dir"
    if running "$NCPEH_RSYSLOG_PID_FILE" && answers "$NCPEH_RSYSLOG_PORT"; then
      log "already running on port $NCPEH_RSYSLOG_PORT"
      sed 's/^/export /' "$dir/env"
      return 0
    fi
    port="${port:-$NCPEH_RSYSLOG_PORT}"
    tls_port="${tls_port:-${NCPEH_RSYSLOG_TLS_PORT:-}}"
    ca="${ca:-${NCPEH_RSYSLOG_TLS_CA:-}}"
    cert="${cert:-${NCPEH_RSYSLOG_TLS_CERT:-}}"
    key="${key:-${NCPEH_RSYSLOG_TLS_KEY:-}}"
    auth="${auth:-${NCPEH_RSYSLOG_TLS_AUTH:-}}"
  fi
  port="${port:-0}"
  if [ -n "$ca$cert$key" ]; then
    [ -f "$ca" ] && [ -f "$cert" ] && [ -f "$key" ] \
      || die "start: TLS needs --tls-ca, --tls-cert and --tls-key (existing files)"
    has_ossl || die "start: no TLS driver (lmnsd_ossl): install Debian's rsyslog-openssl"
    ca="$(cd "$(dirname "$ca")" && pwd)/$(basename "$ca")"
    cert="$(cd "$(dirname "$cert")" && pwd)/$(basename "$cert")"
    key="$(cd "$(dirname "$key")" && pwd)/$(basename "$key")"
    auth="${auth:-x509/certvalid}"
    tls_port="${tls_port:-0}"
  else
    tls_port=""
    auth=""
  fi

  write_config "$dir" "$port" "$tls_port" "$ca" "$cert" "$key" "$auth"
  "$bin" -N1 -f "$dir/rsyslog.conf" >"$dir/check.log" 2>&1 \
    || { cat "$dir/check.log" >&2; die "rsyslogd rejects $dir/rsyslog.conf"; }
  rm -f "$dir/port" "$dir/tls-port" "$dir/rsyslogd.pid"
  touch "$dir/received.log" "$dir/received-headers.log"
  # Detached from our stdio, or whoever waits on our output would wait for rsyslogd too.
  "$bin" -n -f "$dir/rsyslog.conf" -i "$dir/rsyslogd.pid" \
    </dev/null >>"$dir/rsyslogd.log" 2>&1 &
  local pid=$!
  local deadline=$((SECONDS + 30))
  # rsyslogd writes the port files only for port 0 (a free one); a given port must answer.
  while :; do
    if listening "$dir/port" "$port" && { [ -z "$tls_port" ] || listening "$dir/tls-port" "$tls_port"; }; then
      break
    fi
    kill -0 "$pid" 2>/dev/null \
      || { tail -n 20 "$dir/rsyslogd.log" "$dir/internal.log" >&2 2>/dev/null || true
           die "rsyslogd exited at start (log: $dir/rsyslogd.log)"; }
    [ "$SECONDS" -lt "$deadline" ] \
      || { kill "$pid" 2>/dev/null || true; die "rsyslogd did not listen within 30 s"; }
    sleep 0.05
  done
  [ "$port" != "0" ] || port="$(cat "$dir/port")"
  [ -z "$tls_port" ] || [ "$tls_port" != "0" ] || tls_port="$(cat "$dir/tls-port")"
  cat >"$dir/env" <<EOF
NCPEH_RSYSLOG_PORT=$port
NCPEH_RSYSLOG_TLS_PORT=$tls_port
NCPEH_RSYSLOG_RECEIVED=$dir/received.log
NCPEH_RSYSLOG_HEADERS=$dir/received-headers.log
NCPEH_RSYSLOG_PID_FILE=$dir/rsyslogd.pid
NCPEH_RSYSLOG_TLS_CA=$ca
NCPEH_RSYSLOG_TLS_CERT=$cert
NCPEH_RSYSLOG_TLS_KEY=$key
NCPEH_RSYSLOG_TLS_AUTH=$auth
EOF
  log "$("$bin" -v | head -n 1 | awk '{print $1, $2}') (pid $pid) on 127.0.0.1:$port${tls_port:+, TLS on 127.0.0.1:$tls_port}"
  sed 's/^/export /' "$dir/env"
}

cmd_stop() {
  local dir="" purge=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --purge) purge=1; shift ;;
      -*) die "stop: unknown option $1" ;;
      *) dir="$1"; shift ;;
    esac
  done
  [ -n "$dir" ] || die "stop: DIR is required"
  read_env "$dir"
  if running "$NCPEH_RSYSLOG_PID_FILE"; then
    local pid; pid="$(cat "$NCPEH_RSYSLOG_PID_FILE")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "rsyslogd $pid ignored SIGTERM for 20 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.05
    done
  fi
  if [ "$purge" -eq 1 ]; then
    rm -f "$dir"/env "$dir"/rsyslog.conf "$dir"/*.log "$dir"/port "$dir"/tls-port \
      "$dir"/rsyslogd.pid
  fi
}

cmd_status() {
  [ $# -eq 1 ] || die "status: DIR is required"
  read_env "$1"
  running "$NCPEH_RSYSLOG_PID_FILE" && answers "$NCPEH_RSYSLOG_PORT" \
    || { log "not running on port $NCPEH_RSYSLOG_PORT"; exit 1; }
  sed 's/^/export /' "$1/env"
}

case "${1:-help}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  help|-h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
