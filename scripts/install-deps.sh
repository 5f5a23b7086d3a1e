#!/usr/bin/env bash
# Install the Debian packages the gateway's tests and demo need, if any is missing.
# --browser: also chromium, the browser the viewer test drives (never one Playwright downloads).
# postgresql: the server the state store's tests start on loopback (scripts/postgres.sh).
# nginx: the load balancer in front of the replicas test's three gateways (scripts/nginx.sh).
set -euo pipefail
want=(orthanc orthanc-dicomweb dcmtk curl postgresql rsyslog rsyslog-openssl nginx)
[ "${1:-}" = "--browser" ] && want+=(chromium)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# node and npm (fetching the OHIF viewer; its test driver) may come from elsewhere, e.g.
# NodeSource's nodejs, which bundles npm and conflicts with Debian's npm: check the commands.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-deps: installing ${missing[*]}" >&2
for i in $(seq 1 30); do
  # Another apt may hold the lock on a machine that just booted: retry.
  if $sudo apt-get update -q >&2 && $sudo env DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    exit 0
  fi
  echo "install-deps: apt failed (lock held?), retry $i/30" >&2; sleep 10
done
echo "install-deps: could not install ${missing[*]}" >&2; exit 1
