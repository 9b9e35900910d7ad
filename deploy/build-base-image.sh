#!/usr/bin/env bash
# Build a Debian base image with no container registry: debootstrap a minimal Debian with python3, python3-venv and
# the CA certificates, trust the host's locally added CA certificates (/usr/local/share/ca-certificates, so HTTPS
# through a TLS-intercepting proxy works in builds), and `docker import` it. Needs root, debootstrap and a Debian
# mirror (or proxy) that apt can reach; Docker only for the import.
#
#   sudo deploy/build-base-image.sh                          # imports exai-base:bookworm
#   sudo deploy/build-base-image.sh --tar base.tar --no-import
#   docker build --build-arg BASE_IMAGE=exai-base:bookworm -t exai-mcp-server:local .
#
# Options: --tag TAG (default exai-base:<suite>), --tar FILE (keep the root filesystem as a tarball),
# --no-import, --suite SUITE (default bookworm), --mirror URL (default $EXAI_DEBIAN_MIRROR or deb.debian.org).
set -euo pipefail

suite=bookworm
mirror=${EXAI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=""
tarball=""
import=yes
packages=python3,python3-venv,ca-certificates
local_cas=/usr/local/share/ca-certificates

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --tar) tarball=${2:?--tar needs a file}; shift 2 ;;
        --no-import) import=no; shift ;;
        --suite) suite=${2:?--suite needs a value}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a URL}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build-base-image.sh: unknown option $1" >&2; usage ;;
    esac
done
tag=${tag:-exai-base:$suite}
fail() { echo "build-base-image.sh: $1" >&2; echo "  fix: $2" >&2; exit 2; }
[ "$(id -u)" = 0 ] || fail "debootstrap and chroot need root." "run it with sudo."
command -v debootstrap >/dev/null || fail "debootstrap is not installed." "apt-get install debootstrap"
if [ "$import" = yes ]; then
    command -v docker >/dev/null || fail "docker is not installed." "install Docker, or pass --tar FILE --no-import."
elif [ -z "$tarball" ]; then
    fail "--no-import without --tar builds nothing to keep." "add --tar FILE."
fi

root=$(mktemp -d /tmp/exai-base-XXXXXX)
packed=$(mktemp /tmp/exai-base-XXXXXX.tar)
trap 'rm -rf "$root" "$packed"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; rm -f "$root.log"; fail "debootstrap of $suite from $mirror failed (above)." \
        "check that apt reaches the mirror (proxy settings), or pass --mirror URL."; }
rm -f "$root.log"
if [ -d "$local_cas" ]; then
    find "$local_cas" -name '*.crt' -type f -exec cp {} "$root/usr/local/share/ca-certificates/" \;
fi
chroot "$root" update-ca-certificates >/dev/null
rm -rf "$root/var/cache/apt/archives" "$root/var/lib/apt/lists"/*
tar -C "$root" -cf "$packed" .
if [ -n "$tarball" ]; then
    cp "$packed" "$tarball.partial" && mv "$tarball.partial" "$tarball"
    echo "root filesystem: $tarball"
fi
if [ "$import" = yes ]; then
    docker import "$packed" "$tag" >/dev/null
    echo "image: $tag (docker build --build-arg BASE_IMAGE=$tag ...)"
fi
