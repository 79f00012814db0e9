#!/usr/bin/env bash
# Builds libnginx-mod-http-async-mirror_<version>_amd64.deb the way Debian ships nginx
# modules (libnginx-mod-*): the module in /usr/lib/nginx/modules, a load_module snippet in
# /usr/share/nginx/modules-available, enabled by a symlink in /etc/nginx/modules-enabled
# that the maintainer scripts manage, and a Depends on the nginx ABI it was built for.
# Usage: build-deb.sh MODULE.so OUTDIR   (run by `make deb`)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
so=$1 out=$2
pkg=libnginx-mod-http-async-mirror
upstream=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
version="$upstream-1"
# The ABI the module was built for, as the installed nginx package provides it
# (bookworm: nginx Provides nginx-abi-1.22.1-7).
abi=$(dpkg-query -W -f='${Provides}\n' nginx nginx-common 2>/dev/null | tr ',' '\n' | grep -o 'nginx-abi-[^ ]*' | head -1)
[ -n "$abi" ] || { echo "no installed nginx package provides nginx-abi-*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/tree
install -d "$tree/DEBIAN" "$tree/usr/lib/nginx/modules" "$tree/usr/share/nginx/modules-available" \
    "$tree/usr/share/doc/$pkg"
install -m 0644 "$so" "$tree/usr/lib/nginx/modules/ngx_http_async_mirror_module.so"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$tree/usr/lib/nginx/modules/ngx_http_async_mirror_module.so"
echo "load_module modules/ngx_http_async_mirror_module.so;" \
    > "$tree/usr/share/nginx/modules-available/mod-http-async-mirror.conf"
install -m 0644 "$here/README.Debian" "$tree/usr/share/doc/$pkg/README.Debian"
install -m 0644 "$here/copyright" "$tree/usr/share/doc/$pkg/copyright"
date=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}")
printf '%s (%s) unstable; urgency=medium\n\n  * Package of nginx-async-mirror %s for Debian'"'"'s nginx.\n\n -- nginx-async-mirror maintainers <maintainers@nginx-async-mirror.invalid>  %s\n' \
    "$pkg" "$version" "$upstream" "$date" | gzip -9n > "$tree/usr/share/doc/$pkg/changelog.Debian.gz"
for s in postinst prerm postrm; do install -m 0755 "$here/$s" "$tree/DEBIAN/$s"; done

# Shared-library dependencies of the module, as dpkg-shlibdeps computes them.
mkdir -p "$work/src/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: amd64\n' "$pkg" "$pkg" > "$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$tree/usr/lib/nginx/modules/ngx_http_async_mirror_module.so" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
cat > "$tree/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: amd64
Maintainer: nginx-async-mirror maintainers <maintainers@nginx-async-mirror.invalid>
Installed-Size: $size
Depends: $abi, ${shlibs:-libc6}
Recommends: nginx
Section: httpd
Priority: optional
Multi-Arch: foreign
Description: Copy live requests to mirror targets without making clients wait
 An nginx dynamic module that copies live HTTP requests to one or more mirror
 targets on a runtime inside each worker, so production traffic never waits
 for the mirror. It counts every copy, compares the mirror's answers with
 production's, and serves its counters as Prometheus text, JSON or HTML.
CONTROL
(cd "$tree" && find usr -type f -exec md5sum {} + | sort -k2) > "$tree/DEBIAN/md5sums"
mkdir -p "$out"
deb="$out/${pkg}_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$tree" "$deb" >/dev/null
echo "$deb"
