#!/usr/bin/env bash
# nginx.sh - start / stop a REAL nginx on loopback in front of N gateway replicas for the
# ncpeh-dicomweb tests, with the repo's config (deploy/nginx/ncpeh-dicomweb.conf.template:
# routing by Study Instance UID, consistent hashing, streaming); or print that config for a
# deployment of your own.
#
# Usage
#   scripts/nginx.sh start  DIR --upstream HOST:PORT [--upstream HOST:PORT]... [--port N]
#                               [--template FILE]
#                             start (no-op if it answers); prints `export K=V`
#   scripts/nginx.sh stop   DIR [--purge]    stop it (--purge: also delete its logs and config)
#   scripts/nginx.sh status DIR              exit 0 and print the env if it runs
#   scripts/nginx.sh render --listen L --upstream HOST:PORT [--upstream ...]
#                           [--access-log FILE] [--template FILE]
#                             print the http-context config (for /etc/nginx/conf.d/)
#
# On success `start` writes KEY=VALUE lines to DIR/env (and prints them as `export` lines):
#   NCPEH_NGINX_URL         http://127.0.0.1:PORT
#   NCPEH_NGINX_PORT        its port (a free one unless --port)
#   NCPEH_NGINX_UPSTREAMS   the replicas, comma-separated HOST:PORT, in the order given
#   NCPEH_NGINX_ACCESS_LOG  DIR/access.log: one line per request, naming the replica that
#                           served it (`upstream=HOST:PORT`, several when nginx moved it on)
#   NCPEH_NGINX_ERROR_LOG, NCPEH_NGINX_PID_FILE, NCPEH_NGINX_CONF
# e.g.  eval "$(scripts/nginx.sh start /tmp/lb --upstream 127.0.0.1:8081 --upstream 127.0.0.1:8082)"
#       curl "$NCPEH_NGINX_URL/dicom-web/studies"; scripts/nginx.sh stop /tmp/lb --purge
#
# Notes:
# * Needs Debian's `nginx` (scripts/install-deps.sh installs it). No systemd and nothing of
#   /etc/nginx: `nginx -p DIR -c DIR/nginx.conf`, its own config, logs, pid and temp files.
# * Listens on 127.0.0.1 only; one worker process. A restart (stop, then start DIR again)
#   listens on the same port with the same replicas unless told otherwise.
# * As root, the master runs as root and the workers as $NGINX_RUN_USER (default `www-data`,
#   the user Debian's package runs them as; else `nobody`). If that user cannot reach DIR
#   (e.g. under a 0700 pytest tmp dir), the workers' temp files go to a private directory
#   under ${TMPDIR:-/tmp}, named in DIR/env and removed by --purge. Not root: all runs as you.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true  # `&` in a replacement is literal

die() { echo "nginx.sh: error: $*" >&2; exit 1; }
log() { echo "nginx.sh: $*" >&2; }

usage() { sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATE="$ROOT/deploy/nginx/ncpeh-dicomweb.conf.template"
# What nginx does with a replica that fails: one failure takes it out for 10 s (then one
# request tries it again); its studies go to their next replica on the ring meanwhile.
SERVER_OPTIONS="max_fails=1 fail_timeout=10s"

nginx_bin() {
  local found
  found="$(command -v nginx 2>/dev/null || true)"
  [ -n "$found" ] || { [ -x /usr/sbin/nginx ] && found=/usr/sbin/nginx; }
  [ -n "$found" ] || die "no nginx: install Debian's nginx (make deps)"
  echo "$found"
}

run_user() {
  if [ -n "${NGINX_RUN_USER:-}" ]; then echo "$NGINX_RUN_USER"
  elif id www-data >/dev/null 2>&1; then echo www-data
  else echo nobody
  fi
}

# Run a command as the workers' user (as root only).
as_user() {
  local user="$1"; shift
  if command -v runuser >/dev/null 2>&1; then runuser -u "$user" -- "$@"
  else
    setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --init-groups \
      --reset-env -- "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

read_env() {  # DIR -> sets the NCPEH_NGINX_* variables from DIR/env
  [ -f "$1/env" ] || die "no $1/env: was it started with '$0 start $1'?"
  local key value
  while IFS='=' read -r key value; do
    case "$key" in NCPEH_NGINX_*) printf -v "$key" '%s' "$value" ;; esac
  done < "$1/env"
}

running() {  # pid file -> 0 if that nginx master runs
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

answers() {  # port -> 0 if something accepts TCP connections on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_upstream() {  # HOST:PORT
  [[ "$1" =~ ^[A-Za-z0-9.-]+:[0-9]{1,5}$ || "$1" =~ ^\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}$ ]] \
    || die "--upstream $1: not HOST:PORT"
}

render() {  # template listen access_log upstream... -> the http-context config on stdout
  local template="$1" listen="$2" access_log="$3"; shift 3
  [ -f "$template" ] || die "no template $template"
  [ $# -gt 0 ] || die "at least one --upstream HOST:PORT is required"
  local servers="" upstream
  for upstream in "$@"; do
    check_upstream "$upstream"
    [ -z "$servers" ] || servers+=$'\n    '
    servers+="server $upstream $SERVER_OPTIONS;"
  done
  local text; text="$(cat "$template")"
  text="${text//'${NCPEH_LISTEN}'/$listen}"
  text="${text//'${NCPEH_REPLICAS}'/$servers}"
  text="${text//'${NCPEH_ACCESS_LOG}'/$access_log}"
  printf '%s\n' "$text"
}

write_main_config() {  # dir temp_dir user(empty: not root)
  local dir="$1" temp="$2" user="$3"
  {
    echo "# Written by scripts/nginx.sh: nginx in front of the gateway replicas, on loopback."
    [ -z "$user" ] || echo "user $user;"
    cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 1024;
}
http {
    client_body_temp_path $temp/client_body;
    proxy_temp_path $temp/proxy;
    fastcgi_temp_path $temp/fastcgi;
    uwsgi_temp_path $temp/uwsgi;
    scgi_temp_path $temp/scgi;
    include $dir/ncpeh-dicomweb.conf;
}
EOF
  } >"$dir/nginx.conf"
}

cmd_render() {
  local listen="" access_log="/var/log/nginx/ncpeh-access.log" template="$TEMPLATE"
  local upstreams=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --listen) listen="$2"; shift 2 ;;
      --upstream) upstreams+=("$2"); shift 2 ;;
      --access-log) access_log="$2"; shift 2 ;;
      --template) template="$2"; shift 2 ;;
      *) die "render: unknown argument $1" ;;
    esac
  done
  [ -n "$listen" ] || die "render: --listen is required"
  render "$template" "$listen" "$access_log" "${upstreams[@]}"
}

cmd_start() {
  local dir="" port="" template="$TEMPLATE"
  local upstreams=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --upstream) upstreams+=("$2"); shift 2 ;;
      --template) template="$2"; shift 2 ;;
      -*) die "start: unknown option $1" ;;
      *) [ -z "$dir" ] || die "start: one DIR only"; dir="$1"; shift ;;
    esac
  done
  [ -n "$dir" ] || die "start: DIR is required"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local bin; bin="$(nginx_bin)"

  local temp=""
  if [ -f "$dir/env" ]; then  # a restart: the same port and replicas unless told
    read_env "$dir"
    if running "$NCPEH_NGINX_PID_FILE" && answers "$NCPEH_NGINX_PORT"; then
      log "already running on port $NCPEH_NGINX_PORT"
      sed 's/^/export /' "$dir/env"
      return 0
    fi
    port="${port:-$NCPEH_NGINX_PORT}"
    [ ${#upstreams[@]} -gt 0 ] || IFS=',' read -r -a upstreams <<<"$NCPEH_NGINX_UPSTREAMS"
    temp="${NCPEH_NGINX_TEMP_DIR:-}"
  fi
  [ ${#upstreams[@]} -gt 0 ] || die "start: at least one --upstream HOST:PORT is required"
  port="${port:-0}"

  # The workers' temp files: in DIR, unless (as root) their user cannot reach it.
  local user=""
  if [ "$(id -u)" -eq 0 ]; then
    user="$(run_user)"
    if [ -z "$temp" ] || [ ! -d "$temp" ]; then
      if as_user "$user" test -x "$dir" 2>/dev/null; then
        temp="$dir/tmp"
      else
        temp="$(mktemp -d "${TMPDIR:-/tmp}/ncpeh-nginx.XXXXXX")"
        chmod 0711 "$temp"
        # Not named in DIR/env until nginx runs: removed here if it does not.
        trap 'rm -rf "$temp"' EXIT
      fi
    fi
  else
    temp="${temp:-$dir/tmp}"
  fi
  mkdir -p "$temp"

  write_main_config "$dir" "$temp" "$user"
  local attempt listen_port
  for attempt in 1 2 3 4 5; do
    listen_port="$port"
    [ "$listen_port" = "0" ] && listen_port="$(free_port)"
    render "$template" "127.0.0.1:$listen_port" "$dir/access.log" "${upstreams[@]}" \
      >"$dir/ncpeh-dicomweb.conf"
    "$bin" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/check.log" 2>&1 \
      || { cat "$dir/check.log" >&2; die "nginx rejects $dir/nginx.conf"; }
    rm -f "$dir/nginx.pid"
    # It daemonizes once listening; detached from our stdio, or whoever waits on our output
    # would wait for nginx too.
    if "$bin" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
         </dev/null >>"$dir/nginx.out" 2>&1; then
      break
    fi
    log "start on port $listen_port failed (attempt $attempt):"
    tail -n 5 "$dir/error.log" >&2 2>/dev/null || true
    # A port given is not changed; a free one picked may have been taken meanwhile.
    [ "$port" = "0" ] && [ "$attempt" -lt 5 ] \
      || die "could not start nginx (log: $dir/error.log)"
  done
  local deadline=$((SECONDS + 30))
  until running "$dir/nginx.pid" && answers "$listen_port"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      ! running "$dir/nginx.pid" || kill -TERM "$(cat "$dir/nginx.pid")" 2>/dev/null || true
      die "nginx did not listen within 30 s (log: $dir/error.log)"
    fi
    sleep 0.05
  done
  trap - EXIT
  local joined; joined="$(IFS=','; echo "${upstreams[*]}")"
  cat >"$dir/env" <<EOF
NCPEH_NGINX_URL=http://127.0.0.1:$listen_port
NCPEH_NGINX_PORT=$listen_port
NCPEH_NGINX_UPSTREAMS=$joined
NCPEH_NGINX_ACCESS_LOG=$dir/access.log
NCPEH_NGINX_ERROR_LOG=$dir/error.log
NCPEH_NGINX_PID_FILE=$dir/nginx.pid
NCPEH_NGINX_CONF=$dir/nginx.conf
NCPEH_NGINX_TEMP_DIR=$temp
EOF
  log "$("$bin" -v 2>&1 | sed 's/^nginx version: //') (pid $(cat "$dir/nginx.pid")) on 127.0.0.1:$listen_port, replicas $joined"
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
  dir="$(cd "$dir" && pwd)"
  read_env "$dir"
  if running "$NCPEH_NGINX_PID_FILE"; then
    local pid; pid="$(cat "$NCPEH_NGINX_PID_FILE")"
    kill -TERM "$pid" 2>/dev/null || true  # fast shutdown: open connections are closed
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "nginx $pid ignored SIGTERM for 20 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.05
    done
  fi
  if [ "$purge" -eq 1 ]; then
    local temp="${NCPEH_NGINX_TEMP_DIR:-}"
    if [ -n "$temp" ] && [ "$temp" != "$dir/tmp" ]; then rm -rf "$temp"; fi
    rm -rf "$dir/tmp"
    rm -f "$dir"/env "$dir"/nginx.conf "$dir"/ncpeh-dicomweb.conf "$dir"/*.log \
      "$dir"/nginx.out "$dir"/nginx.pid
  fi
}

cmd_status() {
  [ $# -eq 1 ] || die "status: DIR is required"
  read_env "$1"
  running "$NCPEH_NGINX_PID_FILE" && answers "$NCPEH_NGINX_PORT" \
    || { log "not running on port $NCPEH_NGINX_PORT"; exit 1; }
  sed 's/^/export /' "$1/env"
}

case "${1:-help}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  render) shift; cmd_render "$@" ;;
  help|-h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
