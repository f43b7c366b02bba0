#!/usr/bin/env bash
# Builds the web UI into web/dist, which the gateway compiles into the binary (or serves from
# --web-dir, for UI development): the Leptos app
# compiled to WebAssembly, bound with wasm-bindgen of exactly the version in Cargo.lock,
# assets named by content hash (cached for a year) with gzipped copies beside them.
# Installs the wasm32 target and wasm-bindgen-cli (into .tools/cargo) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
bindgen=.tools/cargo/bin/wasm-bindgen
if ! "$bindgen" --version 2>/dev/null | grep -q " $version\$"; then
  echo "installing wasm-bindgen-cli $version into .tools/cargo" >&2
  # Unoptimised: it installs in half the time (about 1 minute instead of 2 here) and binds
  # this ~2.5 MB module in about a second, with byte-identical output. Outside any lint
  # wrapper of the caller's (.ci/run): it is not our code.
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS cargo install --quiet --debug --root .tools/cargo wasm-bindgen-cli --version "=$version"
fi

cargo build --locked -p pixelmesh-web --lib --target wasm32-unknown-unknown --profile web
bound=target/web-bindgen
rm -rf "$bound"
"$bindgen" --target web --no-typescript --out-dir "$bound" --out-name app \
  target/wasm32-unknown-unknown/web/pixelmesh_web.wasm

hashed() { echo "$2-$(sha256sum "$1" | cut -c1-16).$3"; }
js=$(hashed "$bound/app.js" app js)
wasm=$(hashed "$bound/app_bg.wasm" app wasm)
css=$(hashed web/style.css style css)

staging=web/dist.new
rm -rf "$staging"
mkdir -p "$staging/assets"
cp "$bound/app.js" "$staging/assets/$js"
cp "$bound/app_bg.wasm" "$staging/assets/$wasm"
cp web/style.css "$staging/assets/$css"
sed -e "s/@JS@/$js/g" -e "s/@WASM@/$wasm/g" -e "s/@CSS@/$css/g" web/index.html >"$staging/index.html"
for file in "$staging/index.html" "$staging"/assets/*; do
  gzip -9 -k -n "$file"
done
# An unchanged build keeps web/dist as it was: new timestamps would recompile the gateway, which
# embeds it (services/gateway/build.rs), and relink everything that uses it.
if [ -d web/dist ] && diff -rq "$staging" web/dist >/dev/null; then
  rm -rf "$staging"
else
  rm -rf web/dist
  mv "$staging" web/dist
fi
echo "web ui built into web/dist: $(du -sh --exclude='*.gz' web/dist | cut -f1), wasm $(stat -c %s "web/dist/assets/$wasm") bytes, gzipped $(stat -c %s "web/dist/assets/$wasm.gz")" >&2
