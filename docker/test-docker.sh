#!/usr/bin/env bash
# make test-docker: builds docker/Dockerfile and runs the image on this machine, with no
# registry. Local stand-ins replace the base images: Debian bookworm from debootstrap,
# a builder with this machine's Rust toolchain, and a runtime carrying the nginx the
# module is built for in the official image's layout. Crates are vendored on the host and
# the image is built offline. Everything here is test-only; the Dockerfile's defaults stay
# the official images.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W=$ROOT/build/docker-test
mkdir -p "$W"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
DOCKER=/usr/bin/docker

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
    rm -rf "$W/builder" "$W/src"
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

echo "== runtime stand-in: the module's nginx in the official image's layout"
make -s module >/dev/null
rm -rf "$W/runtime" && mkdir -p "$W/runtime/conf"
cp build/nginx "$W/runtime/nginx"
printf 'worker_processes 1;\nerror_log /var/log/nginx/error.log notice;\nevents { worker_connections 1024; }\nhttp {\n    access_log off;\n    include /etc/nginx/conf.d/*.conf;\n}\n' >"$W/runtime/conf/nginx.conf"
cat >"$W/runtime/Dockerfile" <<'DOCKERFILE'
FROM local/bookworm:minbase
COPY nginx /usr/sbin/nginx
COPY conf/nginx.conf /etc/nginx/nginx.conf
# The vendored nginx's compiled-in prefix is /usr/local/nginx; point it at /etc/nginx as in
# the official image (modules/ relative to the prefix is /etc/nginx/modules there).
RUN mkdir -p /etc/nginx/conf.d /etc/nginx/modules /var/log/nginx /usr/share/nginx/html /usr/local/nginx \
 && ln -s /etc/nginx /usr/local/nginx/conf && ln -s /etc/nginx/modules /usr/local/nginx/modules \
 && ln -s /var/log/nginx /usr/local/nginx/logs && echo ok >/usr/share/nginx/html/index.html
CMD ["nginx", "-g", "daemon off;"]
DOCKERFILE
DOCKER_BUILDKIT=1 $DOCKER build -q --network host -t local/nginx-standin:test "$W/runtime" >/dev/null

echo "== source context with vendored crates (offline build)"
rm -rf "$W/src" && mkdir -p "$W/src/.cargo"
git archive HEAD | tar -x -C "$W/src"
(cd "$W/src" && cargo vendor --locked vendor >/dev/null 2>"$W/vendor.log")
printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "vendor"\n' >"$W/src/.cargo/config.toml"

echo "== docker build -f docker/Dockerfile"
start=$(date +%s)
DOCKER_BUILDKIT=1 $DOCKER build --network host -f "$W/src/docker/Dockerfile" \
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
$DOCKER exec "$CID" nginx -V 2>&1 | sed -n 1p
$DOCKER exec "$CID" async-mirror-replay --help | sed -n 1p
echo "1 passed, 0 failed"
