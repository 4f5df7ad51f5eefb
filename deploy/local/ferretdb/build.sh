#!/usr/bin/env bash
# Builds FerretDB from the Go module proxy with every deploy/local/ferretdb/*.patch applied in name order.
#   build.sh stamp VERSION                 prints what a binary built from VERSION and these patches is stamped with
#   build.sh build VERSION OUTPUT [--stock]  builds OUTPUT and writes OUTPUT.stamp (--stock: no patches, for bench/)
# install.sh rebuilds var/bin/ferretdb when its stamp differs, so a changed patch rebuilds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
VAR=${TASKBUS_CACHE:-$(cd "$here/../../.." && pwd)/var}
cmd=$1 version=$2

stamp() { # $1: "--stock" or ""
  if [ "$1" = --stock ]; then echo "$version stock"; else echo "$version $(cat "$here"/*.patch | sha256sum | cut -c1-16)"; fi
}

case $cmd in
  stamp) stamp "${3:-}"; exit 0 ;;
  build) out=$3 mode=${4:-} ;;
  *) echo "usage: $0 stamp|build VERSION [OUTPUT [--stock]]" >&2; exit 2 ;;
esac

export GOMODCACHE="$VAR/go/mod" GOCACHE="$VAR/go/cache" GOFLAGS=-modcacherw GOTOOLCHAIN=local
src=$(go mod download -json "github.com/FerretDB/FerretDB@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "${TMPDIR:-/tmp}/ferretdb-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The module cache is read-only and shared: build a copy. Building inside the module's own tree
# needs build/version/version.txt (the release tarballs generate it).
cp -r "$src" "$work/src" && chmod -R u+w "$work/src"
echo "$version" >"$work/src/build/version/version.txt"
if [ "$mode" != --stock ]; then
  for p in "$here"/*.patch; do patch -d "$work/src" -p1 --forward --quiet <"$p"; done
fi
(cd "$work/src" && go build -trimpath -o "$work/ferretdb" ./cmd/ferretdb)
# A rename, not an overwrite: a FerretDB already running the old binary keeps it until restarted.
mv -f "$work/ferretdb" "$out"
stamp "$mode" >"$out.stamp"
