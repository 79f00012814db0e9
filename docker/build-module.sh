#!/usr/bin/env bash
# Builds ngx_http_async_mirror_module.so against nginx $NGINX_VERSION configured with
# --with-compat (the official nginx images are built with it, so the module's signature
# matches theirs). Runs inside docker/Dockerfile's builder stage, or natively:
#
#   NGINX_VERSION=1.28.3 OUT=/tmp/out docker/build-module.sh
#
# The version the crate vendors (1.28.3) builds offline from the nginx-src crate; another
# version is downloaded from nginx.org by nginx-src (NGX_VERSION).
set -euo pipefail
cd "$(dirname "$0")/.."

NGINX_VERSION=${NGINX_VERSION:-1.28.3}
OUT=${OUT:-build/docker-out}
# nginx-src's version is "<crate>+<nginx>"; the part after "+" is the nginx it vendors.
VENDORED=$(sed -n '/^name = "nginx-src"/{n;s/^version = ".*+\(.*\)"/\1/p;}' Cargo.lock)

if [ "$NGINX_VERSION" != "${VENDORED:-1.28.3}" ]; then
    export NGX_VERSION="$NGINX_VERSION"
fi
# The default configure of nginx-src includes --with-compat. With Kafka (librdkafka-dev).
cargo build --release --locked --features "${FEATURES:-kafka}" ${CARGO_FLAGS:-}
mkdir -p "$OUT"
cp target/release/libngx_http_async_mirror_module.so "$OUT/ngx_http_async_mirror_module.so"
cp target/release/async-mirror-replay "$OUT/async-mirror-replay"
echo "built $OUT/ngx_http_async_mirror_module.so and async-mirror-replay for nginx $NGINX_VERSION"
