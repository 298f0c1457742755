#!/bin/sh
# Builds target/deb/fastedge_VERSION_ARCH.deb from an already built binary (`make deb` builds
# the release one first; PROFILE=debug packs target/debug/fastedge; FASTEDGE_BIN=PATH packs
# that binary and DEB_OUT=DIR writes elsewhere, as the package test does). Prints the path of
# the package. Needs dpkg-dev (dpkg-shlibdeps), binutils (strip) and gzip.
set -eu
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
bin=${FASTEDGE_BIN:-target/$profile/fastedge}
[ -x "$bin" ] || { echo "build-deb: $bin is missing: cargo build --profile $profile -p fastedge" >&2; exit 1; }
# The C ABI for way readers (capi/), built beside the binary.
ways_lib=${FASTEDGE_WAYS_LIB:-$(dirname "$bin")/libfastedge_ways.so}
[ -f "$ways_lib" ] || { echo "build-deb: $ways_lib is missing: cargo build --profile $profile -p fastedge-ways" >&2; exit 1; }
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
out=${DEB_OUT:-target/deb}
root=$out/root
rm -rf "$root" "$out/docs" "$out/shlibs"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/etc/fastedge/split" "$root/etc/fastedge/keys" \
  "$root/lib/systemd/system" "$root/usr/share/man/man1" "$root/usr/share/doc/fastedge" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d" "$root/usr/lib/$multiarch" "$root/usr/include" \
  "$root/usr/share/doc/fastedge/examples" "$root/usr/share/doc/fastedge/prometheus"

strip --strip-debug -o "$root/usr/bin/fastedge" "$bin"
chmod 0755 "$root/usr/bin/fastedge"
"$bin" generate-docs --out "$out/docs"
for page in "$out"/docs/man/*.1; do
  gzip -9n -c "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
install -m 0644 "$out/docs/completions/fastedge.bash" "$root/usr/share/bash-completion/completions/fastedge"
install -m 0644 "$out/docs/completions/_fastedge" "$root/usr/share/zsh/vendor-completions/_fastedge"
install -m 0644 "$out/docs/completions/fastedge.fish" "$root/usr/share/fish/vendor_completions.d/fastedge.fish"
install -m 0644 packaging/systemd/*.service "$root/lib/systemd/system/"
# The default configuration: every key documented, with its default (demo backend and a
# self-signed certificate in /var/lib/fastedge until a cert and backends are set).
"$bin" serve --print-default-config > "$root/etc/fastedge/serve.toml"
chmod 0644 "$root/etc/fastedge/serve.toml"
install -m 0644 README.md SECURITY.md "$root/usr/share/doc/fastedge/"
# README links docs/…: the guides keep that place.
mkdir -p "$root/usr/share/doc/fastedge/docs"
install -m 0644 docs/*.md "$root/usr/share/doc/fastedge/docs/"
# Way readers in C: the library, its header and the example (cc way_reader.c -lfastedge_ways).
strip --strip-debug -o "$root/usr/lib/$multiarch/libfastedge_ways.so" "$ways_lib"
chmod 0644 "$root/usr/lib/$multiarch/libfastedge_ways.so"
install -m 0644 capi/include/fastedge_ways.h "$root/usr/include/"
install -m 0644 capi/examples/way_reader.c "$root/usr/share/doc/fastedge/examples/"
# A fleet's Prometheus: example scrape configuration and recording rules (docs/fleet.md).
install -m 0644 packaging/prometheus/*.yml "$root/usr/share/doc/fastedge/prometheus/"
printf 'fastedge %s\nLicense: Apache-2.0\n' "$version" > "$root/usr/share/doc/fastedge/copyright"

# Library dependencies as dpkg-shlibdeps finds them (it wants a debian/control beside it).
mkdir -p "$out/shlibs/debian"
printf 'Source: fastedge\n\nPackage: fastedge\nArchitecture: any\n' > "$out/shlibs/debian/control"
depends=$(cd "$out/shlibs" && dpkg-shlibdeps -O "../root/usr/bin/fastedge" "../root/usr/lib/$multiarch/libfastedge_ways.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
  packaging/debian/control.in > "$root/DEBIAN/control"
echo "Installed-Size: $size" >> "$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
# A shared library in the linker's directories: dpkg runs ldconfig after installing it.
printf 'activate-noawait ldconfig\n' > "$root/DEBIAN/triggers"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
deb="$out/fastedge_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
