#!/usr/bin/env bash
# make test-docker: builds docker/Dockerfile and runs the image on this machine, with no
# registry. Local stand-ins replace the base images: Debian bookworm from debootstrap,
# a builder with this machine's Rust toolchain, and a runtime carrying nginx NGINX_VERSION
# (the Dockerfile's default, nginx stable) built from vendor/nginx with the official image's
# configure options and layout. The builder builds the module against the same tarball (in
# the build context), as the Dockerfile does with the official images. Crates are vendored
# on the host and the image is built offline. Everything here is test-only; the
# Dockerfile's defaults stay the official images.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W=$ROOT/build/docker-test
mkdir -p "$W"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
DOCKER=/usr/bin/docker
# The nginx of the image: the Dockerfile's default (nginx stable), or NGINX_VERSION=1.31.4 etc.
# (any version in vendor/nginx).
NGINX_VERSION=${NGINX_VERSION:-$(sed -n 's/^ARG NGINX_VERSION=//p' docker/Dockerfile)}

missing=""
for p in docker.io debootstrap; do dpkg -s $p >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

PIDS=()
cleanup() {
    set +e
    [ -n "${CID:-}" ] && $DOCKER rm -f "$CID" >/dev/null 2>&1
    for img in local/nginx-async-mirror:test local/async-mirror-builder:test local/nginx-standin:test local/bookworm:minbase; do
        $DOCKER rmi -f "$img" >/dev/null 2>&1
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    $DOCKER builder prune -af >/dev/null 2>&1
    [ -n "${DPID:-}" ] && { kill "$DPID"; wait "$DPID" 2>/dev/null; }
    # Keep the debootstrap tree for the next run; the toolchain copy and sources are large.
    rm -rf "$W/builder" "$W/src" "$W/runtime"
    mountpoint -q /run/docker/netns/default 2>/dev/null && umount /run/docker/netns/default
}
trap cleanup EXIT

echo "== engine"
dockerd --iptables=false --ip6tables=false --bridge=none >"$W/dockerd.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.2; done
$DOCKER info >/dev/null

echo "== base image: Debian bookworm (debootstrap)"
# The machine's own Debian mirror (plain http works inside builds too).
MIRROR=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit} /^deb / && $2 ~ /\/debian\/?$/ {print $2; exit}' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if [ ! -x "$W/rootfs/bin/sh" ]; then
    rm -rf "$W/rootfs"
    debootstrap --variant=minbase --include=libssl3,libpcre2-8-0,zlib1g bookworm "$W/rootfs" "${MIRROR/https:/http:}" >"$W/debootstrap.log"
fi
tar -C "$W/rootfs" -c . | $DOCKER import - local/bookworm:minbase >/dev/null

echo "== builder stand-in: bookworm + this machine's Rust toolchain"
rm -rf "$W/builder" && mkdir -p "$W/builder"
cp -a "$(rustc --print sysroot)" "$W/builder/rust"
cat >"$W/builder/Dockerfile" <<'DOCKERFILE'
FROM local/bookworm:minbase
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
DOCKER_BUILDKIT=1 $DOCKER build -q --network host -t local/async-mirror-builder:test "$W/builder" >/dev/null

echo "== runtime stand-in: nginx $NGINX_VERSION from vendor/nginx, built and laid out as in the official image"
# The official image's configure options (nginx -V there), without its compiler flags: far
# more modules than the builder configures, which --with-compat makes irrelevant to the
# module's signature.
OFFICIAL_CONFIGURE=(--prefix=/etc/nginx --sbin-path=/usr/sbin/nginx --modules-path=/usr/lib/nginx/modules
    --conf-path=/etc/nginx/nginx.conf --error-log-path=/var/log/nginx/error.log
    --http-log-path=/var/log/nginx/access.log --pid-path=/var/run/nginx.pid --lock-path=/var/run/nginx.lock
    --http-client-body-temp-path=/var/cache/nginx/client_temp --http-proxy-temp-path=/var/cache/nginx/proxy_temp
    --http-fastcgi-temp-path=/var/cache/nginx/fastcgi_temp --http-uwsgi-temp-path=/var/cache/nginx/uwsgi_temp
    --http-scgi-temp-path=/var/cache/nginx/scgi_temp --user=nginx --group=nginx --with-compat --with-file-aio
    --with-threads --with-http_addition_module --with-http_auth_request_module --with-http_dav_module
    --with-http_flv_module --with-http_gunzip_module --with-http_gzip_static_module --with-http_mp4_module
    --with-http_random_index_module --with-http_realip_module --with-http_secure_link_module
    --with-http_slice_module --with-http_ssl_module --with-http_stub_status_module --with-http_sub_module
    --with-http_v2_module --with-http_v3_module --with-mail --with-mail_ssl_module --with-stream
    --with-stream_realip_module --with-stream_ssl_module --with-stream_ssl_preread_module)
TARBALL=vendor/nginx/nginx-$NGINX_VERSION.tar.gz
[ -f "$TARBALL" ] || { echo "no $TARBALL: the stand-in runtime is built from vendor/nginx"; exit 1; }
want=$(sed -n "s/^\([0-9a-f]\{64\}\)  nginx-$NGINX_VERSION\.tar\.gz$/\1/p" vendor/nginx/SHA256SUMS)
sum=$(sha256sum "$TARBALL" | cut -d' ' -f1)
[ "$sum" = "$want" ] || { echo "sha256 of $TARBALL is $sum, vendor/nginx/SHA256SUMS says '$want'"; exit 1; }
NGX=$W/nginx-$NGINX_VERSION
stamp="$sum ${OFFICIAL_CONFIGURE[*]}"
# Kept between runs, like the debootstrap tree, while the tarball and options are the same.
if [ ! -x "$NGX/root/usr/sbin/nginx" ] || [ "$(cat "$NGX/stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$NGX" && mkdir -p "$NGX/src"
    tar -xzf "$TARBALL" -C "$NGX/src" --strip-components=1
    (cd "$NGX/src" && ./configure "${OFFICIAL_CONFIGURE[@]}" >"$NGX/configure.log" 2>&1) \
        || { tail -30 "$NGX/configure.log"; exit 1; }
    env -u MAKEFLAGS -u MAKELEVEL make -C "$NGX/src" -j"$(nproc)" >"$NGX/make.log" 2>&1 || { tail -30 "$NGX/make.log"; exit 1; }
    env -u MAKEFLAGS -u MAKELEVEL make -C "$NGX/src" install DESTDIR="$NGX/root" >>"$NGX/make.log" 2>&1 \
        || { tail -30 "$NGX/make.log"; exit 1; }
    echo "$stamp" >"$NGX/stamp"
fi
rm -rf "$W/runtime" && mkdir -p "$W/runtime"
cp -a "$NGX/root" "$W/runtime/root"
# /var/run is a symlink in the image; the official image serves /usr/share/nginx/html and
# keeps modules in /usr/lib/nginx/modules.
R=$W/runtime/root
rm -rf "$R/var/run" && mkdir -p "$R/usr/share/nginx" "$R/usr/lib/nginx/modules"
mv "$R/etc/nginx/html" "$R/usr/share/nginx/html"
# The official image's nginx.conf, shortened.
cat >"$W/runtime/root/etc/nginx/nginx.conf" <<'CONF'
user  nginx;
worker_processes  auto;

error_log  /var/log/nginx/error.log notice;
pid        /var/run/nginx.pid;

events {
    worker_connections  1024;
}

http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;
    access_log    off;
    sendfile      on;
    keepalive_timeout  65;
    include /etc/nginx/conf.d/*.conf;
}
CONF
cat >"$W/runtime/Dockerfile" <<'DOCKERFILE'
FROM local/bookworm:minbase
COPY root/ /
# As in the official image: an nginx user, modules in /usr/lib/nginx/modules reached as
# /etc/nginx/modules, the temp paths under /var/cache/nginx.
RUN groupadd --system nginx && useradd --system --gid nginx --no-create-home --home /nonexistent --shell /bin/false nginx \
 && ln -s /usr/lib/nginx/modules /etc/nginx/modules && mkdir -p /etc/nginx/conf.d /var/cache/nginx /var/log/nginx \
 && nginx -t
CMD ["nginx", "-g", "daemon off;"]
DOCKERFILE
DOCKER_BUILDKIT=1 $DOCKER build -q --network host -t local/nginx-standin:test "$W/runtime" >/dev/null

echo "== source context with vendored crates (offline build)"
rm -rf "$W/src" && mkdir -p "$W/src/.cargo"
git archive HEAD | tar -x -C "$W/src"
# In vendor/crates: vendor/nginx holds the nginx sources the builder uses.
(cd "$W/src" && cargo vendor --locked vendor/crates >/dev/null 2>"$W/vendor.log")
printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "vendor/crates"\n' >"$W/src/.cargo/config.toml"

echo "== docker build -f docker/Dockerfile"
start=$(date +%s)
DOCKER_BUILDKIT=1 $DOCKER build --network host -f "$W/src/docker/Dockerfile" \
    --build-arg NGINX_VERSION="$NGINX_VERSION" \
    --build-arg BUILDER_IMAGE=local/async-mirror-builder:test \
    --build-arg RUNTIME_IMAGE=local/nginx-standin:test \
    --build-arg CARGO_FLAGS=--offline \
    -t local/nginx-async-mirror:test "$W/src" >"$W/build.log" 2>&1 || { tail -40 "$W/build.log"; exit 1; }
echo "   built in $(( $(date +%s) - start )) s"

echo "== run the image: traffic through it, copies at a sink on the host"
cargo build -q --release --example peers
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK=$(free_port); BACKEND=$(free_port); FRONT=$(free_port)
target/release/examples/peers sink "$SINK" >/dev/null & PIDS+=($!)
target/release/examples/peers sink "$BACKEND" >/dev/null & PIDS+=($!)
cat >"$W/test.conf" <<CONF
async_mirror_zone mirror_stats 1m;
server {
    listen 127.0.0.1:$FRONT;
    location / { async_mirror http://127.0.0.1:$SINK; proxy_pass http://127.0.0.1:$BACKEND; }
    location = /mirror-status { async_mirror off; async_mirror_status; }
}
CONF
CID=$($DOCKER run -d --network host -v "$W/test.conf:/etc/nginx/conf.d/default.conf:ro" local/nginx-async-mirror:test)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$FRONT/mirror-status" && break; sleep 0.1; done
for i in $(seq 20); do
    [ "$(curl -s "http://127.0.0.1:$FRONT/docker-$i")" = ok ] || { $DOCKER logs "$CID" | tail; echo "request $i failed"; exit 1; }
done
got=0
for _ in $(seq 50); do
    got=$(curl -s "http://127.0.0.1:$SINK/__peer_stats" | sed -n 's/requests=\([0-9]*\).*/\1/p')
    [ "${got:-0}" -ge 20 ] && break
    sleep 0.1
done
curl -s "http://127.0.0.1:$FRONT/mirror-status" | grep -E '^nginx_async_mirror_copies_total.*outcome="ok"'
[ "${got:-0}" -ge 20 ] || { echo "FAILED: the sink got ${got:-0} of 20 copies"; $DOCKER logs "$CID" | tail; exit 1; }
version=$($DOCKER exec "$CID" nginx -v 2>&1)
echo "$version"
[ "$version" = "nginx version: nginx/$NGINX_VERSION" ] || { echo "FAILED: the image runs '$version', not nginx $NGINX_VERSION"; exit 1; }
$DOCKER exec "$CID" async-mirror-replay --help | sed -n 1p
echo "1 passed, 0 failed"
