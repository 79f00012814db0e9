#!/usr/bin/env bash
# make test-matrix: the integration suite against every nginx version the module supports.
#
#   MATRIX_VERSIONS="1.22.1 1.24.0 ..." MATRIX_TESTS="mirror:: body::" packaging/matrix/test-matrix.sh
#
# (the Makefile holds both lists). For each version: that nginx, the module built against
# its configured source, and the integration test binary run with TEST_NGINX_BINARY and
# TEST_NGINX_MODULE pointing at them. Where each nginx comes from:
#
#   1.22.1  Debian 12's packaged nginx (/usr/sbin/nginx); the module is built against
#           nginx-dev's source configured with Debian's own flags (make distro-src).
#   1.28.3  the nginx the ngx crate vendors (nginx-src), as `make test` uses it.
#   others  vendor/nginx/nginx-VERSION.tar.gz (sha256 checked against
#           vendor/nginx/SHA256SUMS), configured with CONFIGURE below and built here.
#
# The test binary does not depend on the nginx version (it finds nginx and the module
# through the environment), so it is built once. Module builds for the non-vendored
# versions share one cargo target directory: switching versions rebuilds only nginx-sys,
# ngx and this crate (about 20 s) instead of every dependency (about 65 s).
# Suites run one after another, never two at once: the tests are timing-sensitive.
#
# Last, a module built for one version is loaded into another version's nginx, which must
# refuse it with nginx's own "version X instead of Y" message.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
W=$ROOT/build/matrix
TARGET=$ROOT/target/matrix
read -r -a VERSIONS <<<"${MATRIX_VERSIONS:?the nginx versions to test, e.g. \"1.24.0 1.31.4\"}"
read -r -a TESTS <<<"${MATRIX_TESTS:-}"
# What the tests need from nginx besides the module: http_v2 (HTTP/2 clients), ssl, threads
# and realip as in the vendored nginx. --with-compat makes the module's signature match any
# nginx of the same version configured with --with-compat, whatever its other modules.
CONFIGURE=(--with-compat --with-threads --with-http_ssl_module --with-http_v2_module --with-http_realip_module)
# One suite's upper bound (it takes about 25 s).
SUITE_TIMEOUT=${MATRIX_SUITE_TIMEOUT:-900}
JOBS=$(nproc 2>/dev/null || echo 2)
mkdir -p "$W"
total_start=$(date +%s)

# 1.24.0 -> 1024000, as nginx_version / NGX_VERSION_NUMBER.
version_number() { local IFS=.; set -- $1; echo $(( $1 * 1000000 + $2 * 1000 + $3 )); }
now() { date +%s; }
# A command's output goes to a log; on failure the log's tail is shown.
logged() {
    local log=$1; shift
    "$@" >"$log" 2>&1 || { echo "   failed: $*"; tail -30 "$log" | sed 's/^/   | /'; return 1; }
}

echo "== integration test binary (once, with the vendored nginx)"
start=$(now)
json=$(cargo test --release --locked --features test-hooks --test integration --no-run \
    --message-format=json 2>"$W/test-binary.log") || { tail -30 "$W/test-binary.log"; exit 1; }
TEST_BIN=$(grep '"reason":"compiler-artifact"' <<<"$json" | grep '"name":"integration"' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
VENDORED_OBJS=$(grep '"reason":"build-script-executed"' <<<"$json" | grep '#nginx-sys@' \
    | sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -1)/objs
[ -x "$TEST_BIN" ] || { echo "no integration test binary in cargo's output"; exit 1; }
[ -x "$VENDORED_OBJS/nginx" ] || { echo "no vendored nginx in $VENDORED_OBJS"; exit 1; }
VENDORED=$("$VENDORED_OBJS/nginx" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
echo "   $TEST_BIN ($(( $(now) - start )) s)"

# Extracts and builds nginx VERSION from its vendored tarball into $W/nginx-VERSION, unless
# a build of the same tarball with the same flags is already there.
build_nginx() {
    local v=$1 tarball=$ROOT/vendor/nginx/nginx-$1.tar.gz src=$W/nginx-$1 sum want
    [ -f "$tarball" ] || { echo "   no $tarball"; return 1; }
    want=$(sed -n "s/^\([0-9a-f]\{64\}\)  nginx-$v\.tar\.gz$/\1/p" vendor/nginx/SHA256SUMS)
    sum=$(sha256sum "$tarball" | cut -d' ' -f1)
    [ -n "$want" ] && [ "$sum" = "$want" ] \
        || { echo "   sha256 of $tarball is $sum, vendor/nginx/SHA256SUMS says '${want:-nothing}'"; return 1; }
    local stamp="$sum ${CONFIGURE[*]}"
    if [ -x "$src/objs/nginx" ] && [ "$(cat "$src/.matrix-stamp" 2>/dev/null)" = "$stamp" ]; then
        echo "   nginx $v: already built in $src"
        return 0
    fi
    rm -rf "$src" && tar -xzf "$tarball" -C "$W"
    [ -x "$src/configure" ] || { echo "   $tarball has no nginx-$v/configure"; return 1; }
    (cd "$src" && logged configure.log ./configure "${CONFIGURE[@]}") || return 1
    # nginx's own make, not a sub-make of ours (no jobserver to share).
    (cd "$src" && logged make.log env -u MAKEFLAGS -u MAKELEVEL make -j"$JOBS") || return 1
    echo "$stamp" >"$src/.matrix-stamp"
}

# Builds the module (with the test hooks the suite uses) against a configured nginx:
# $2 is NGINX_SOURCE_DIR or NGINX_BUILD_DIR=..., the module lands in $3.
build_module() {
    local v=$1 var=$2 out=$3
    env "$var" CARGO_TARGET_DIR="$TARGET" \
        cargo build --release --locked --features test-hooks --lib >"$W/$v/cargo.log" 2>&1 \
        || { echo "   module build failed"; tail -30 "$W/$v/cargo.log" | sed 's/^/   | /'; return 1; }
    cp -f "$TARGET/release/libngx_http_async_mirror_module.so" "$out"
}

declare -A RESULT BUILD_S TEST_S NGINX MODULE FLAKY
for v in "${VERSIONS[@]}"; do
    echo "== nginx $v"
    start=$(now)
    mkdir -p "$W/$v"
    MODULE[$v]=$W/$v/ngx_http_async_mirror_module.so
    ok=1
    if [ "$v" = "$VENDORED" ]; then
        NGINX[$v]=$VENDORED_OBJS/nginx
        cp -f "$(dirname "$TEST_BIN")/libngx_http_async_mirror_module.so" "${MODULE[$v]}"
    elif [ "$v" = 1.22.1 ]; then
        NGINX[$v]=/usr/sbin/nginx
        logged "$W/$v/distro-src.log" env -u MAKEFLAGS -u MAKELEVEL make -s distro-src || ok=0
        [ $ok = 1 ] && { build_module "$v" NGINX_BUILD_DIR="$ROOT/build/debian-nginx/objs" "${MODULE[$v]}" || ok=0; }
    else
        NGINX[$v]=$W/nginx-$v/objs/nginx
        build_nginx "$v" || ok=0
        [ $ok = 1 ] && { build_module "$v" NGINX_SOURCE_DIR="$W/nginx-$v" "${MODULE[$v]}" || ok=0; }
    fi
    got=$("${NGINX[$v]}" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p' || true)
    if [ $ok = 1 ] && [ "$got" != "$v" ]; then
        echo "   ${NGINX[$v]} is nginx '${got}', not $v"; ok=0
    fi
    BUILD_S[$v]=$(( $(now) - start ))
    TEST_S[$v]=0
    if [ $ok = 0 ]; then
        RESULT[$v]="FAILED to build"
        echo "   nginx $v: ${RESULT[$v]} (${BUILD_S[$v]} s)"
        continue
    fi
    start=$(now)
    rc=0
    TEST_NGINX_BINARY=${NGINX[$v]} TEST_NGINX_MODULE=${MODULE[$v]} \
        timeout "$SUITE_TIMEOUT" "$TEST_BIN" "${TESTS[@]}" >"$W/$v/test.log" 2>&1 || rc=$?
    # A failure that does not happen again when the failed tests run alone is reported as
    # a flake with its name (test.log keeps the first run, test-again.log the second); it
    # says nothing about the version.
    if [ $rc != 0 ]; then
        mapfile -t failed_tests < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$W/$v/test.log")
        if [ ${#failed_tests[@]} -gt 0 ] && [ ${#failed_tests[@]} -le 3 ]; then
            echo "   again, alone: ${failed_tests[*]}"
            rerun=0
            TEST_NGINX_BINARY=${NGINX[$v]} TEST_NGINX_MODULE=${MODULE[$v]} \
                timeout "$SUITE_TIMEOUT" "$TEST_BIN" --exact "${failed_tests[@]}" >"$W/$v/test-again.log" 2>&1 || rerun=$?
            if [ $rerun = 0 ]; then
                rc=0
                FLAKY[$v]="${failed_tests[*]}"
            fi
        fi
    fi
    TEST_S[$v]=$(( $(now) - start ))
    # "test result: ok. 62 passed; 0 failed; 0 ignored; ..." -> "62 passed, 0 failed"
    summary=$(grep '^test result:' "$W/$v/test.log" | tail -1 \
        | sed -n 's/.* \([0-9]*\) passed; \([0-9]*\) failed.*/\1 passed, \2 failed/p')
    if [ $rc = 0 ] && [[ $summary == 0\ passed* ]]; then
        # A filter in MATRIX_TESTS that matches nothing (a renamed test module) proves nothing.
        RESULT[$v]="FAILED (no test ran: MATRIX_TESTS=${TESTS[*]})"
    elif [ $rc = 0 ] && [ -n "${FLAKY[$v]:-}" ]; then
        RESULT[$v]="ok: failed once, passed alone"
    elif [ $rc = 0 ]; then
        RESULT[$v]="ok: $summary"
    else
        RESULT[$v]="FAILED (${summary:-exit $rc})"
    fi
    echo "   nginx $v: ${RESULT[$v]}; build ${BUILD_S[$v]} s, tests ${TEST_S[$v]} s"
done

# nginx itself refuses a module built for another version, with a message that says so.
echo "== a module built for another nginx version is refused"
MISMATCH="not checked (needs two versions that built)"
built=()
for v in "${VERSIONS[@]}"; do [[ ${RESULT[$v]} == ok* ]] && built+=("$v"); done
if [ ${#built[@]} -ge 2 ]; then
    from=${built[0]} into=${built[-1]}
    d=$W/mismatch && rm -rf "$d" && mkdir -p "$d/logs"
    printf 'load_module %s;\nerror_log %s/logs/error.log;\npid %s/logs/nginx.pid;\nevents {}\n' \
        "${MODULE[$from]}" "$d" "$d" >"$d/nginx.conf"
    out=$("${NGINX[$into]}" -t -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" 2>&1 || true)
    want="version $(version_number "$from") instead of $(version_number "$into")"
    echo "$out" | sed 's/^/   /'
    if grep -qF "$want" <<<"$out" && grep -q 'test failed' <<<"$out"; then
        MISMATCH="ok: the $from module in nginx $into: \"$want\""
    else
        MISMATCH="FAILED: nginx $into did not refuse the $from module with \"$want\""
    fi
    echo "   $MISMATCH"
fi

echo
echo "== nginx versions (build: nginx and the module; test binary: $TEST_BIN)"
failed=0
for v in "${VERSIONS[@]}"; do
    printf '%-8s %-36s build %4s s  tests %4s s\n' "$v" "${RESULT[$v]}" "${BUILD_S[$v]}" "${TEST_S[$v]}"
    [[ ${RESULT[$v]} == ok* ]] || failed=1
done
echo "version mismatch: $MISMATCH"
[[ $MISMATCH == ok* || ${#VERSIONS[@]} -lt 2 ]] || failed=1
# CI shows only the tail of its output: what failed, and why, goes last.
for v in "${VERSIONS[@]}"; do
    log=$W/$v/test.log
    [[ ${RESULT[$v]} == FAILED\ \(* || -n ${FLAKY[$v]:-} ]] && [ -f "$log" ] || continue
    echo "-- nginx $v: the failed tests and their messages ($log)"
    grep -E '^test .* FAILED$' "$log" | sed 's/^/   /' | head -10
    grep -E -A12 '^---- .* stdout ----$' "$log" | grep -v '^note: run with' | cut -c1-300 | head -60 | sed 's/^/   | /'
done
echo "total: $(( $(now) - total_start )) s for ${#VERSIONS[@]} versions (with the test binary)"
exit $failed
