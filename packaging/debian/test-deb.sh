#!/usr/bin/env bash
# Installs the package with apt on Debian's nginx, checks `nginx -t`, runs Debian's nginx
# (its default prefix, so load_module finds the packaged .so) with a mirroring server
# block, checks the copies arrive at a sink, then removes, reinstalls and purges it and
# checks nothing is left and nginx still starts. Finally lintian. Run by `make test-deb`.
set -euo pipefail
deb=$(readlink -f "$1")
root=$(cd "$(dirname "$0")/../.." && pwd)
peers=$root/target/release/examples/peers
pkg=libnginx-mod-http-async-mirror
link=/etc/nginx/modules-enabled/50-mod-http-async-mirror.conf
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

echo "== apt-get install $deb"
$SUDO apt-get install -y -qq "$deb" > "$work/apt.log" 2>&1 || { cat "$work/apt.log"; exit 1; }
dpkg -L $pkg | sed 's/^/   /'
[ -L "$link" ] || { echo "postinst did not enable the module ($link)"; exit 1; }
$SUDO nginx -t 2>&1 | sed 's/^/   /'

front=$(free_port) backend=$(free_port) sink=$(free_port)
"$peers" sink "$sink" > "$work/sink.log" 2>&1 & pids+=($!)
wait_port "$sink"
run_nginx() {  # $1: extra location directives
    cat > "$work/nginx.conf" <<CONF
include /etc/nginx/modules-enabled/*.conf;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log notice;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $work/body; proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi; uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
    server { listen 127.0.0.1:$backend; location / { return 200 "backend\n"; } }
    server {
        listen 127.0.0.1:$front;
        location / { $1 proxy_pass http://127.0.0.1:$backend; }
    }
}
CONF
    $SUDO nginx -t -c "$work/nginx.conf" > "$work/t.log" 2>&1 || { cat "$work/t.log"; return 1; }
    $SUDO nginx -c "$work/nginx.conf"
    wait_port "$front"
}
stop_nginx() {
    local pid; pid=$(cat "$work/nginx.pid")
    $SUDO kill -QUIT "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}

echo "== Debian's nginx with the packaged module, mirroring 50 requests"
run_nginx "async_mirror http://127.0.0.1:$sink;"
for i in $(seq 50); do curl -sf "http://127.0.0.1:$front/r$i" > /dev/null; done
for _ in $(seq 50); do
    got=$(curl -s "http://127.0.0.1:$sink/__peer_stats" | sed -n 's/^requests=\([0-9]*\).*/\1/p')
    [ "${got:-0}" -ge 50 ] && break; sleep 0.1
done
echo "   the sink received ${got:-0} copies"
[ "${got:-0}" -eq 50 ] || { cat "$work/error.log"; exit 1; }
stop_nginx
grep -q 'async_mirror: runtime started' "$work/error.log"

echo "== remove, reinstall (the symlink comes back), purge"
$SUDO apt-get remove -y -qq $pkg > /dev/null
[ ! -e "$link" ] && [ -L "$link.removed" ] || { echo "remove did not set the symlink aside"; exit 1; }
$SUDO apt-get install -y -qq "$deb" > /dev/null
[ -L "$link" ] || { echo "reinstall did not restore the symlink"; exit 1; }
$SUDO apt-get purge -y -qq $pkg > /dev/null
left=$(ls /usr/lib/nginx/modules/ngx_http_async_mirror_module.so /usr/share/nginx/modules-available/mod-http-async-mirror.conf \
    "$link" "$link.removed" /usr/share/doc/$pkg 2>/dev/null || true)
[ -z "$left" ] || { echo "left after purge: $left"; exit 1; }
dpkg -s $pkg > /dev/null 2>&1 && { echo "still installed"; exit 1; }
$SUDO nginx -t > /dev/null 2>&1 || { $SUDO nginx -t; exit 1; }
run_nginx ""
curl -sf "http://127.0.0.1:$front/" > /dev/null
stop_nginx
echo "   nothing left; Debian's nginx starts without the module"

echo "== lintian"
command -v lintian > /dev/null || $SUDO apt-get install -y -qq --no-install-recommends lintian > /dev/null
lintian --tag-display-limit 0 "$deb" > "$work/lintian.log" 2>&1 || true
sed 's/^/   /' "$work/lintian.log"
if grep -q '^E:' "$work/lintian.log"; then echo "lintian errors"; exit 1; fi
echo "== package test passed"
