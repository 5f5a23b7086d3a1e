#!/usr/bin/env bash
# The OHIF viewer the gateway serves at /viewer/: the prebuilt `dist/` of the npm package
# @ohif/app (no build needed), fetched once with `npm pack` into a cache and checked against a
# pinned hash. Idempotent; prints the dist path on stdout (progress goes to stderr).
#   scripts/ohif.sh            fetch if missing, print the dist path
#   scripts/ohif.sh --version  print the pinned version
# OHIF_CACHE_DIR overrides the cache (default ~/.cache/ncpeh-dicomweb: survives `make clean`
# and is shared by checkouts).
set -euo pipefail

# The one place the viewer is pinned: version and the registry's sha512 of its tarball.
OHIF_VERSION=3.13.2
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="

if [ "${1:-}" = "--version" ]; then echo "$OHIF_VERSION"; exit 0; fi

cache="${OHIF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ncpeh-dicomweb}"
dest="$cache/ohif-$OHIF_VERSION"
# A finished fetch is renamed into place whole, so its existence means it is complete.
if [ -f "$dest/dist/index.html" ]; then echo "$dest/dist"; exit 0; fi

command -v npm >/dev/null || { echo "ohif.sh: npm is needed (make deps installs it)" >&2; exit 1; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "ohif.sh: fetching @ohif/app@$OHIF_VERSION (50 MB, once)" >&2
npm pack "@ohif/app@$OHIF_VERSION" --pack-destination "$tmp" --silent >/dev/null
tarball="$tmp/ohif-app-$OHIF_VERSION.tgz"
got=$(python3 -c 'import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' \
  "$tarball")
if [ "$got" != "$OHIF_INTEGRITY" ]; then
  echo "ohif.sh: @ohif/app@$OHIF_VERSION has integrity $got, expected $OHIF_INTEGRITY" >&2
  exit 1
fi
mkdir "$tmp/out"
tar -xzf "$tarball" -C "$tmp/out" package/dist package/LICENSE
mv "$tmp/out/package" "$tmp/ohif"
[ -f "$tmp/ohif/dist/index.html" ] || { echo "ohif.sh: no dist/index.html in the package" >&2; exit 1; }
# Another run may have won the race: keep its copy.
mv -T "$tmp/ohif" "$dest" 2>/dev/null || [ -f "$dest/dist/index.html" ]
echo "$dest/dist"
