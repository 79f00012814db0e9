#!/usr/bin/env bash
# The README's demo: start nginx with the module, a backend and a mirror sink,
# send traffic, then show what the mirror received and the module's counters.
# Run through `make demo` (which builds build/nginx and the module first).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=$PWD/build/demo
NGINX=$PWD/build/nginx
MODULE=$PWD/build/ngx_http_async_mirror_module.so
FRONT_PORT=${FRONT_PORT:-18080} BACKEND_PORT=${BACKEND_PORT:-18081}
SINK_PORT=${SINK_PORT:-18082} DEAD_PORT=${DEAD_PORT:-18089}
CANDIDATE_PORT=${CANDIDATE_PORT:-18083} BASELINE_PORT=${BASELINE_PORT:-18084}
REQUESTS=${REQUESTS:-200}

rm -rf "$PREFIX" && mkdir -p "$PREFIX/logs"
render() {
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@MODULE@|$MODULE|g" -e "s|@FRONT_PORT@|$FRONT_PORT|g" \
        -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@SINK_PORT@|$SINK_PORT|g" \
        -e "s|@DEAD_PORT@|$DEAD_PORT|g" -e "s|@CANDIDATE_PORT@|$CANDIDATE_PORT|g" \
        -e "s|@BASELINE_PORT@|$BASELINE_PORT|g" "nginx-conf/demo/$1" > "$PREFIX/$1"
}
render peers.conf
render front.conf

stop() {  # stop an nginx by the PID in its pid file, and wait for it to exit
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill -QUIT "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
trap 'stop "$PREFIX/logs/nginx.pid"; stop "$PREFIX/logs/peers.pid"' EXIT

"$NGINX" -p "$PREFIX" -c "$PREFIX/peers.conf" -e "$PREFIX/logs/peers-error.log"
"$NGINX" -p "$PREFIX" -c "$PREFIX/front.conf" -e "$PREFIX/logs/error.log"
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$FRONT_PORT/" && break; sleep 0.1; done

echo "== one request through the front nginx (port $FRONT_PORT)"
curl -s -H 'X-Request-Id: demo-1' "http://127.0.0.1:$FRONT_PORT/hello?who=demo"

echo "== sending $REQUESTS requests to / (mirrored to the sink) and $REQUESTS to /dead/ (mirror refused)"
time_it() {  # total wall time of N sequential requests on one keepalive connection
    local path=$1 urls=() start end
    for i in $(seq "$REQUESTS"); do urls+=("http://127.0.0.1:$FRONT_PORT$path$i"); done
    start=$(date +%s%N)
    curl -s --fail "${urls[@]}" > /dev/null
    end=$(date +%s%N)
    echo "   $path: $REQUESTS requests in $(( (end - start) / 1000000 )) ms, all answered by the backend"
}
time_it "/r?n="
time_it "/dead/r?n="

for _ in $(seq 50); do
    [ "$(wc -l < "$PREFIX/logs/mirror-received.log" 2>/dev/null || echo 0)" -ge $((REQUESTS + 1)) ] && break
    sleep 0.1
done
echo "== the mirror sink received $(wc -l < "$PREFIX/logs/mirror-received.log") copies; the first three:"
head -3 "$PREFIX/logs/mirror-received.log" | sed 's/^/   /'

echo "== \$async_mirror_outcome in the access log (last two lines):"
tail -2 "$PREFIX/logs/access.log" | sed 's/^/   /'
sleep 0.5  # counters reach the shared zone every 250 ms
echo "== the module's counters: curl http://127.0.0.1:$FRONT_PORT/mirror-status (non-zero copy counters)"
curl -s "http://127.0.0.1:$FRONT_PORT/mirror-status" \
    | grep -E '^nginx_async_mirror_(copies|connections|breaker)' | grep -v ' 0$' | sed 's/^/   /'
echo "   (the refused target's breaker opened after 3 consecutive failures: the rest were dropped without a connect)"

echo "== comparing a candidate with production: $REQUESTS requests to /api/ (candidate + baseline)"
urls=(); for i in $(seq "$REQUESTS"); do urls+=("http://127.0.0.1:$FRONT_PORT/api/item?id=$i"); done
curl -s --fail "${urls[@]}" > /dev/null
want=$((REQUESTS * 2))
for _ in $(seq 50); do
    got=$(curl -s "http://127.0.0.1:$FRONT_PORT/mirror-status" | grep '^nginx_async_mirror_comparisons_total' \
        | awk '{ s += $2 } END { print s + 0 }')
    [ "$got" -ge "$want" ] && break
    sleep 0.1
done
echo "   verdicts (candidate: price wrong for 1 in 10; request_id differs everywhere, so it is noise):"
curl -s "http://127.0.0.1:$FRONT_PORT/mirror-status" | grep '^nginx_async_mirror_comparisons_total' \
    | grep -v ' 0$' | sed 's/^/   /'
echo "   fields that differed, candidate beside baseline:"
curl -s "http://127.0.0.1:$FRONT_PORT/mirror-status" | grep '^nginx_async_mirror_differences_total' \
    | grep "$CANDIDATE_PORT" | sed 's/^/   /'
sleep 0.5  # mismatch lines are written every 250 ms
echo "== one line of the mismatch log ($PREFIX/logs/compare.log), of $(wc -l < "$PREFIX/logs/compare.log"):"
head -1 "$PREFIX/logs/compare.log" | sed 's/^/   /'
echo "   (at most rate=10 lines/s per worker; the rest are counted:)"
curl -s "http://127.0.0.1:$FRONT_PORT/mirror-status" | grep '^nginx_async_mirror_compare_log_lines_total' \
    | sed 's/^/   /'

stop "$PREFIX/logs/nginx.pid"
echo "== mirror errors go to the error log, at most one line per target per second per worker:"
grep 'while mirroring to' "$PREFIX/logs/error.log" | head -3 | sed 's/^.*\[warn\]/   [warn]/' || true
