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
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
out=${DEB_OUT:-target/deb}
root=$out/root
rm -rf "$root" "$out/docs" "$out/shlibs"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/etc/fastedge/split" "$root/etc/fastedge/keys" \
  "$root/lib/systemd/system" "$root/usr/share/man/man1" "$root/usr/share/doc/fastedge" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"

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
printf 'fastedge %s\nLicense: Apache-2.0\n' "$version" > "$root/usr/share/doc/fastedge/copyright"

# Library dependencies as dpkg-shlibdeps finds them (it wants a debian/control beside it).
mkdir -p "$out/shlibs/debian"
printf 'Source: fastedge\n\nPackage: fastedge\nArchitecture: any\n' > "$out/shlibs/debian/control"
depends=$(cd "$out/shlibs" && dpkg-shlibdeps -O "../root/usr/bin/fastedge" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
  packaging/debian/control.in > "$root/DEBIAN/control"
echo "Installed-Size: $size" >> "$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
deb="$out/fastedge_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
