#!/usr/bin/env bash
# Builds ngx_http_async_mirror_module.so for nginx $NGINX_VERSION, configured with
# --with-compat: the official nginx images are built with it, so the module's signature
# matches theirs whatever other modules they have. Runs inside docker/Dockerfile's builder
# stage, or natively:
#
#   NGINX_VERSION=1.30.4 OUT=/tmp/out docker/build-module.sh
#
# The nginx source, first match:
#   NGINX_SOURCE=PATH   a tarball (nginx-VERSION.tar.gz) or an unpacked source tree (with
#                       configure at its top); in a Docker build, a path in the build context.
#   vendor/nginx/nginx-$NGINX_VERSION.tar.gz, checked against vendor/nginx/SHA256SUMS
#                       (1.24.0, 1.26.3, 1.30.4 and 1.31.4 are there).
#   the nginx the ngx crate vendors, when NGINX_VERSION is its version (1.28.3).
#   otherwise the nginx-src crate downloads $NGINX_VERSION from nginx.org (needs network).
# The source's version must be NGINX_VERSION: a module loads only into that exact version.
# NGINX_CONFIGURE_ARGS replaces the configure options after --with-compat. FEATURES: the
# crate's features (default kafka, which needs librdkafka-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NGINX_VERSION=${NGINX_VERSION:-1.30.4}
NGINX_SOURCE=${NGINX_SOURCE:-}
OUT=${OUT:-build/docker-out}
CONFIGURE_ARGS=${NGINX_CONFIGURE_ARGS:---with-threads --with-http_ssl_module --with-http_v2_module --with-http_realip_module}
# nginx-src's version is "<crate>+<nginx>"; the part after "+" is the nginx it vendors.
VENDORED=$(sed -n '/^name = "nginx-src"/{n;s/^version = ".*+\(.*\)"/\1/p;}' Cargo.lock)
TARBALL=vendor/nginx/nginx-$NGINX_VERSION.tar.gz

if [ -z "$NGINX_SOURCE" ] && [ -f "$TARBALL" ]; then
    want=$(sed -n "s/^\([0-9a-f]\{64\}\)  nginx-$NGINX_VERSION\.tar\.gz$/\1/p" vendor/nginx/SHA256SUMS)
    got=$(sha256sum "$TARBALL" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "sha256 of $TARBALL is $got, vendor/nginx/SHA256SUMS says '$want'" >&2; exit 1; }
    NGINX_SOURCE=$TARBALL
fi

if [ -n "$NGINX_SOURCE" ]; then
    work=$ROOT/build/module-nginx
    rm -rf "$work" && mkdir -p "$work"
    if [ -d "$NGINX_SOURCE" ]; then
        cp -a "$NGINX_SOURCE" "$work/src"
    else
        mkdir -p "$work/src" && tar -xzf "$NGINX_SOURCE" -C "$work/src" --strip-components=1
    fi
    src=$work/src
    [ -x "$src/configure" ] || { echo "$NGINX_SOURCE: no configure at the top of the nginx source" >&2; exit 1; }
    got=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' "$src/src/core/nginx.h")
    [ "$got" = "$NGINX_VERSION" ] \
        || { echo "$NGINX_SOURCE is nginx $got, not NGINX_VERSION=$NGINX_VERSION" >&2; exit 1; }
    # shellcheck disable=SC2086 # the options are words
    (cd "$src" && ./configure --with-compat $CONFIGURE_ARGS >"$work/configure.log" 2>&1) \
        || { tail -30 "$work/configure.log" >&2; exit 1; }
    # Only the configured headers are needed (objs/ngx_auto_config.h, objs/Makefile).
    target=${CARGO_TARGET_DIR:-target/external}
    NGINX_SOURCE_DIR=$src CARGO_TARGET_DIR=$target cargo build --release --locked --features "${FEATURES:-kafka}" ${CARGO_FLAGS:-}
else
    if [ "$NGINX_VERSION" != "${VENDORED:-1.28.3}" ]; then
        export NGX_VERSION="$NGINX_VERSION"
    fi
    # nginx-src's default configure includes --with-compat.
    target=${CARGO_TARGET_DIR:-target}
    cargo build --release --locked --features "${FEATURES:-kafka}" ${CARGO_FLAGS:-}
fi
mkdir -p "$OUT"
cp "$target/release/libngx_http_async_mirror_module.so" "$OUT/ngx_http_async_mirror_module.so"
cp "$target/release/async-mirror-replay" "$OUT/async-mirror-replay"
echo "built $OUT/ngx_http_async_mirror_module.so and async-mirror-replay for nginx $NGINX_VERSION"
