#!/usr/bin/env bash
# postgres.sh - start / stop a REAL PostgreSQL server on loopback for the ncpeh-dicomweb tests
# (the gateway's state store, `[state] database_url`). No systemd, no Debian cluster tools: a
# private cluster (initdb) run by pg_ctl, with its data, socket, log and env in one directory.
#
# Usage
#   scripts/postgres.sh start  DIR [--port N]   initdb (once) and start; prints `export K=V`
#   scripts/postgres.sh stop   DIR [--purge]    stop the server whose data is in DIR (--purge:
#                                               also delete its data)
#   scripts/postgres.sh status DIR              exit 0 and print the env if it answers
#
# On success `start` writes KEY=VALUE lines to DIR/env (and prints them as `export` lines):
#   NCPEH_PG_URL=postgresql://postgres@127.0.0.1:PORT/postgres   superuser, trust auth
#   NCPEH_PG_PORT NCPEH_PG_SOCKET_DIR NCPEH_PG_DATA NCPEH_PG_BIN NCPEH_PG_USER
# e.g.  eval "$(scripts/postgres.sh start /tmp/pg)"; psql "$NCPEH_PG_URL" -c 'select 1'
#       scripts/postgres.sh stop /tmp/pg --purge
#
# Notes:
# * Needs Debian's `postgresql` package (scripts/install-deps.sh installs it); the newest
#   /usr/lib/postgresql/<version>/bin is used, or $PG_BIN.
# * Listens on 127.0.0.1 only (port 0 or unset: a free one) and on a unix socket; trust
#   authentication for loopback and the socket: for tests, never for production. fsync stays on.
# * PostgreSQL refuses to run as root. As root the server runs as $PG_RUN_USER (default
#   `postgres`, the user Debian's package creates; else `nobody`) through runuser or setpriv.
#   If that user cannot reach DIR (e.g. under a 0700 pytest tmp dir), the data and socket go
#   to a private directory under ${TMPDIR:-/tmp}, named in DIR/env and removed by --purge.
set -euo pipefail

die() { echo "postgres.sh: error: $*" >&2; exit 1; }
log() { echo "postgres.sh: $*" >&2; }

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local found
  found="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null \
    | sort -V | tail -n 1)"
  [ -n "$found" ] && [ -x "$found/pg_ctl" ] \
    || die "no PostgreSQL server in /usr/lib/postgresql/*/bin: install Debian's postgresql (make deps)"
  echo "$found"
}

run_user() {
  if [ "$(id -u)" -ne 0 ]; then id -un; return; fi
  if [ -n "${PG_RUN_USER:-}" ]; then echo "$PG_RUN_USER"
  elif id postgres >/dev/null 2>&1; then echo postgres
  else echo nobody
  fi
}

# Run a command as the server's user (as ourselves when not root).
as_user() {
  local user="$1"; shift
  if [ "$(id -u)" -ne 0 ]; then "$@"
  elif command -v runuser >/dev/null 2>&1; then runuser -u "$user" -- "$@"
  else
    setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --init-groups \
      --reset-env -- "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

read_env() {  # DIR -> sets the NCPEH_PG_* variables from DIR/env
  [ -f "$1/env" ] || die "no $1/env: was the server started with '$0 start $1'?"
  local key value
  while IFS='=' read -r key value; do
    case "$key" in NCPEH_PG_*) printf -v "$key" '%s' "$value" ;; esac
  done < "$1/env"
}

answers() {  # port socket_dir
  "$NCPEH_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2 >/dev/null 2>&1
}

cmd_start() {
  local dir="" port="${NCPEH_PG_PORT_WANTED:-0}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      -*) die "start: unknown option $1" ;;
      *) [ -z "$dir" ] || die "start: one DIR only"; dir="$1"; shift ;;
    esac
  done
  [ -n "$dir" ] || die "start: DIR is required"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  NCPEH_PG_BIN="$(pg_bin)"
  local user; user="$(run_user)"

  if [ -f "$dir/env" ]; then
    read_env "$dir"
    if answers "$NCPEH_PG_PORT"; then
      log "already running on port $NCPEH_PG_PORT"
      sed 's/^/export /' "$dir/env"
      return 0
    fi
  fi

  # Where the server's own files live: DIR itself if the server's user can write there.
  local home="$dir"
  if [ "$(id -u)" -eq 0 ]; then
    local owner; owner="$(stat -c %u "$dir")"
    chown "$user" "$dir" 2>/dev/null || true
    if ! as_user "$user" test -w "$dir" -a -x "$dir" 2>/dev/null; then
      chown "$owner" "$dir" 2>/dev/null || true
      if [ -n "${NCPEH_PG_DATA:-}" ] && [ -d "$(dirname "$NCPEH_PG_DATA")" ]; then
        home="$(dirname "$NCPEH_PG_DATA")"  # the private directory of an earlier start
      else
        home="$(mktemp -d "${TMPDIR:-/tmp}/ncpeh-pg.XXXXXX")"
        chmod 0711 "$home"
        chown "$user" "$home"
      fi
    fi
  fi
  local data="$home/data"

  if [ ! -f "$data/PG_VERSION" ]; then
    log "initdb in $data (as $user)"
    as_user "$user" "$NCPEH_PG_BIN/initdb" -D "$data" -U postgres --auth=trust \
      --encoding=UTF8 --locale=C.UTF-8 >"$home/initdb.log" 2>&1 \
      || { cat "$home/initdb.log" >&2; die "initdb failed"; }
  fi

  local attempt
  for attempt in 1 2 3 4 5; do
    [ "$port" = "0" ] && port="$(free_port)"
    if as_user "$user" "$NCPEH_PG_BIN/pg_ctl" -D "$data" -l "$home/postgres.log" -w -t 60 \
         -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$home \
             -c fsync=on -c max_connections=200 -c shared_buffers=32MB" \
         start >/dev/null; then
      break
    fi
    log "start on port $port failed (attempt $attempt):"
    tail -n 5 "$home/postgres.log" >&2 || true
    [ "$attempt" -eq 5 ] && die "could not start PostgreSQL (log: $home/postgres.log)"
    port=0
  done

  cat >"$dir/env" <<EOF
NCPEH_PG_URL=postgresql://postgres@127.0.0.1:$port/postgres
NCPEH_PG_PORT=$port
NCPEH_PG_SOCKET_DIR=$home
NCPEH_PG_DATA=$data
NCPEH_PG_BIN=$NCPEH_PG_BIN
NCPEH_PG_USER=$user
EOF
  log "PostgreSQL $("$NCPEH_PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
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
  if [ -f "$NCPEH_PG_DATA/postmaster.pid" ]; then
    as_user "$NCPEH_PG_USER" "$NCPEH_PG_BIN/pg_ctl" -D "$NCPEH_PG_DATA" -m fast -w -t 30 stop \
      >/dev/null || log "pg_ctl stop failed"
  fi
  if [ "$purge" -eq 1 ]; then
    local home; home="$(dirname "$NCPEH_PG_DATA")"
    rm -rf "$NCPEH_PG_DATA"
    if [ "$home" != "$(cd "$dir" && pwd)" ]; then rm -rf "$home"; fi
    rm -f "$dir/env" "$dir/initdb.log" "$dir/postgres.log"
  fi
}

cmd_status() {
  [ $# -eq 1 ] || die "status: DIR is required"
  read_env "$1"
  answers "$NCPEH_PG_PORT" || { log "not answering on port $NCPEH_PG_PORT"; exit 1; }
  sed 's/^/export /' "$1/env"
}

case "${1:-help}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  help|-h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
