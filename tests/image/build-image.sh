#!/usr/bin/env bash
# Build the stunner-dp image as tests/image does, without a Docker engine:
#   1. a Debian bookworm base (python3, python3-venv, ca-certificates) made with debootstrap and
#      imported into buildah (`buildah from scratch` + add + commit), cached between runs;
#   2. our Dockerfile built on it with `buildah bud --isolation chroot --storage-driver vfs`.
#
# Usage: tests/image/build-image.sh [IMAGE]      (default localhost/stunner-dp:test)
# Env:   STUNNER_DP_IMAGE_CACHE  cache dir (default /var/cache/stunner-dp-image): buildah storage
#                                holding the base image, logs
#        DEBIAN_MIRROR           debootstrap mirror (default http://deb.debian.org/debian)
#        STUNNER_DP_REBUILD_BASE=1  make the base again
#        STUNNER_DP_IMAGE_REF=COMMIT  build that commit (git archive) instead of the work tree
# The buildah storage is private to the cache dir: run buildah/podman with
#   --root "$STUNNER_DP_IMAGE_CACHE/storage" --runroot /run/stunner-dp-image --storage-driver vfs
# Exit 77 (and a line "SKIP: reason" on stderr) when this machine cannot do it; 1 on a build error.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${STUNNER_DP_IMAGE_CACHE:-/var/cache/stunner-dp-image}
RUNROOT=${STUNNER_DP_IMAGE_RUNROOT:-/run/stunner-dp-image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=${1:-localhost/stunner-dp:test}
BASE_IMAGE=localhost/stunner-dp-base:bookworm

cant() { echo "SKIP: $*" >&2; exit 77; }

[ "$(uname -s)" = Linux ] || cant "needs Linux"
[ "$(id -u)" = 0 ] || cant "needs root (debootstrap, buildah with vfs storage and chroot isolation)"

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v buildah >/dev/null || missing+=(buildah)
command -v turnutils_uclient >/dev/null || missing+=(coturn)   # turnutils_uclient/_peer for the run test
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || cant "missing ${missing[*]} and no apt-get to install them"
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"/tmp/stunner-dp-image-apt.log" 2>&1 \
        || cant "apt-get install ${missing[*]} failed: $(tail -n 3 /tmp/stunner-dp-image-apt.log | tr '\n' ' ')"
fi

mkdir -p "$CACHE" "$RUNROOT"
# One build or test run at a time per cache (tests/image holds this lock for its whole module
# and sets STUNNER_DP_IMAGE_LOCKED=1): the storage and the image tag are shared.
if [ "${STUNNER_DP_IMAGE_LOCKED:-0}" != 1 ]; then
    exec 9>"$CACHE/lock"
    flock -w 1800 9 || { echo "another image build holds $CACHE/lock" >&2; exit 1; }
fi
B=(buildah --root "$CACHE/storage" --runroot "$RUNROOT" --storage-driver vfs)

# Working containers left behind by an interrupted run (the storage is ours alone).
"${B[@]}" rm --all >/dev/null 2>&1 || true

if [ "${STUNNER_DP_REBUILD_BASE:-0}" = 1 ]; then
    "${B[@]}" rmi --force "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if ! "${B[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    t0=$SECONDS
    rootfs="$CACHE/rootfs.new"
    rm -rf "$rootfs" "$CACHE/rootfs.tar"
    echo "debootstrap bookworm into $rootfs (first run only; about a minute)" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || cant "debootstrap bookworm from $MIRROR failed: $(tail -n 2 "$CACHE/debootstrap.log" | tr '\n' ' ')"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar -C "$rootfs" -cf "$CACHE/rootfs.tar" .
    ctr=$("${B[@]}" from scratch)
    "${B[@]}" add "$ctr" "$CACHE/rootfs.tar" / >/dev/null
    "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
    "${B[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs" "$CACHE/rootfs.tar"
    echo "base image $BASE_IMAGE made in $((SECONDS - t0)) s" >&2
fi

# The CA bundle pip must trust (this machine's, which includes any intercepting proxy's CA);
# an empty secret exercises the "no certificate" path of the Dockerfile.
cert=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$cert" ]; then cert="$CACHE/empty-cert"; : >"$cert"; fi

context=$REPO
revision=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "${STUNNER_DP_IMAGE_REF:-}" ]; then
    context=$(mktemp -d /tmp/stunner-dp-image-ctx.XXXXXX)
    trap 'rm -rf "$context"' EXIT
    git -C "$REPO" archive "$STUNNER_DP_IMAGE_REF" | tar -x -C "$context"
    revision=$(git -C "$REPO" rev-parse --short "$STUNNER_DP_IMAGE_REF")
fi

t0=$SECONDS
"${B[@]}" bud --isolation chroot --format docker --layers=false \
    --build-arg BASE="$BASE_IMAGE" \
    --build-arg REVISION="$revision" \
    --secret id=pip_cert,src="$cert" \
    -f "$context/Dockerfile" -t "$IMAGE" "$context" >"$CACHE/bud.log" 2>&1 \
    || { tail -n 30 "$CACHE/bud.log" >&2; echo "buildah bud failed (log: $CACHE/bud.log)" >&2; exit 1; }
echo "image $IMAGE built in $((SECONDS - t0)) s" >&2
"${B[@]}" rmi --prune >/dev/null 2>&1 || true   # the previous build's now-untagged image
"${B[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"
