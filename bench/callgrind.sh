#!/usr/bin/env bash
# Instructions per request, by thread, which do not depend on the machine's load:
# one single-process nginx (build/nginx with the module) under callgrind
# --separate-threads=yes, a 1 KiB JSON backend in the same nginx and a peers sink that
# answers JSON, 6,000 requests from wrk. Prints each thread's total; divide by the
# attempted copies it prints.
#   bench/callgrind.sh off ""                                    # mirror, no comparison
#   bench/callgrind.sh on "async_mirror_compare on;"             # identical answers
#   MIRROR_BODY=other.json bench/callgrind.sh diff "async_mirror_compare on;"   # answers that differ
# Capture targets (make module FEATURES=kafka): MIRROR names the target instead of the sink;
# KAFKA=1 starts librdkafka's mock cluster (examples/mock_broker) and puts its address
# for {broker} in MIRROR.
#   MIRROR=file:capture.gor bench/callgrind.sh file ""
#   KAFKA=1 MIRROR=kafka://{broker}/copies bench/callgrind.sh kafka ""
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=$1 EXTRA=${2:-}
P=$PWD/build/callgrind/$TAG
rm -rf "$P" && mkdir -p "$P/logs"
BPORT=${BPORT:-18091} SPORT=${SPORT:-18092} FPORT=${FPORT:-18090}
python3 -c "import sys; sys.path.insert(0, 'bench'); import bench; print(bench.json_document(), end='')" > "$P/body.json"
BODY=$(cat "$P/body.json")
cat > "$P/nginx.conf" <<CONF
load_module $PWD/build/ngx_http_async_mirror_module.so;
daemon off; master_process off; worker_processes 1;
error_log $P/logs/error.log notice; pid $P/logs/nginx.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type application/json;
  upstream backend { server 127.0.0.1:$BPORT; keepalive 32; }
  server { listen 127.0.0.1:$BPORT; location / { return 200 '$BODY'; } }
  server { listen 127.0.0.1:$FPORT;
    location / { async_mirror http://127.0.0.1:$SPORT; $EXTRA proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /st { async_mirror off; async_mirror_status; } }
}
CONF
cat > "$P/limit.lua" <<'LUA'
local counter = 0
request = function()
  counter = counter + 1
  if counter > 3000 then wrk.thread:stop() end
  return wrk.format("GET", "/x")
end
LUA
PEER_BODY=${MIRROR_BODY:-$P/body.json} target/release/examples/peers sink "$SPORT" > /dev/null &
SINK=$!
BROKER_PID=
if [ -n "${KAFKA:-}" ]; then
    target/release/examples/mock_broker > "$P/broker.txt" &
    BROKER_PID=$!
    for _ in $(seq 50); do [ -s "$P/broker.txt" ] && break; sleep 0.1; done
    MIRROR=${MIRROR//\{broker\}/$(head -1 "$P/broker.txt")}
fi
MIRROR=${MIRROR:-http://127.0.0.1:$SPORT}
sed -i "s|async_mirror http://127.0.0.1:$SPORT;|async_mirror $MIRROR;|" "$P/nginx.conf"
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$P/cg.out" build/nginx -p "$P" -c "$P/nginx.conf" \
    -e "$P/logs/error.log" 2> "$P/valgrind.log" &
NG=$!
trap 'kill $SINK $BROKER_PID 2>/dev/null || true; kill -QUIT $NG 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$FPORT/" && break; sleep 0.2; done
wrk -t2 -c8 -d60s -s "$P/limit.lua" "http://127.0.0.1:$FPORT/x" > "$P/wrk.txt" 2>&1 || true
for _ in $(seq 50); do curl -s "http://127.0.0.1:$FPORT/st?format=json" > "$P/status.json"; \
    grep -q '"inflight":0' "$P/status.json" && break; sleep 0.1; done
kill -QUIT $NG; wait $NG || true
python3 -c "import json; t = json.load(open('$P/status.json'))['targets'][0]; print('copies attempted', t['attempted'], 'verdicts', {k: v for c in t['comparisons'] for k, v in c['verdicts'].items() if v})"
for f in "$P"/cg.out-*; do echo "$(basename "$f") $(grep -h '^summary' "$f")"; done
