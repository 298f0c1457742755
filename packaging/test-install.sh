#!/bin/sh
# Installs a fastedge .deb into a throwaway copy of this machine (an overlay over / in a
# private mount namespace: the host is left untouched) and runs fastedge-serve.service the way
# systemd would: its state directory, its ExecStartPre and ExecStart as its User with its
# Environment, and a notify socket it must say READY=1 on. Then a request through it must get
# a 200. Prints what it checked; exits non-zero at the first failure.
#
# Usage: packaging/test-install.sh PACKAGE.deb PORT   (as root)
set -eu
deb=$(realpath "$1")
port=$2
if [ "${IN_NAMESPACE:-}" != 1 ]; then
  IN_NAMESPACE=1 exec unshare --mount --propagation private "$0" "$@"
fi
base=$(mktemp -d /tmp/fastedge-install.XXXXXX)
# The mounts go with the namespace; the directory is emptied by unmounting its tmpfs.
trap 'umount -l "$base" 2>/dev/null || true; rmdir "$base" 2>/dev/null || true' EXIT
# The writable layer on a tmpfs of its own (overlayfs refuses layers that overlap).
mount -t tmpfs tmpfs "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
root=$base/root
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
# A copy of this machine may already hold an install: the test wants a fresh one.
chroot "$root" sh -c 'dpkg --purge fastedge >/dev/null 2>&1 || true'
cp "$deb" "$root/tmp/fastedge.deb"
chroot "$root" dpkg -i /tmp/fastedge.deb
echo "installed: $(chroot "$root" dpkg-query -W -f '${Package} ${Version} ${Status}' fastedge)"
chroot "$root" id fastedge
chroot "$root" id fastedge-keys
for f in /usr/bin/fastedge /etc/fastedge/serve.toml /lib/systemd/system/fastedge-serve.service \
  /lib/systemd/system/fastedge-split@.service /lib/systemd/system/fastedge-keyserver.service \
  /usr/share/man/man1/fastedge-serve.1.gz /usr/share/bash-completion/completions/fastedge; do
  [ -e "$root$f" ] || { echo "missing after install: $f" >&2; exit 1; }
done
echo "files: binary, configuration, units, man pages, completions"
# The C ABI: the example compiles and links against the installed header and library alone.
chroot "$root" cc -o /tmp/way_reader /usr/share/doc/fastedge/examples/way_reader.c -lfastedge_ways \
  || { echo "the installed C example does not build against libfastedge_ways" >&2; exit 1; }
chroot "$root" sh -c '/tmp/way_reader 2>&1 || true' | grep -qi "usage" \
  || { echo "the installed way_reader does not run" >&2; exit 1; }
echo "C ABI: way_reader.c built against /usr/include/fastedge_ways.h and libfastedge_ways.so, runs"
if chroot "$root" sh -c 'command -v man' >/dev/null; then
  page=$(chroot "$root" man -w fastedge-serve) || { echo "man fastedge-serve: no page" >&2; exit 1; }
  chroot "$root" sh -c 'MANPAGER=cat man fastedge-serve 2>/dev/null' | grep -q -- "--config" \
    || { echo "man fastedge-serve does not show the serve options" >&2; exit 1; }
  echo "man fastedge-serve: $page, shows the options"
else
  echo "man fastedge-serve: NOT CHECKED, man is not installed here (apt-get install man-db)"
fi

unit=$root/lib/systemd/system/fastedge-serve.service
value() { sed -n "s/^$1=//p" "$unit" | head -n 1; }
user=$(value User)
state=/var/lib/$(value StateDirectory)
environment=$(value Environment)
pre=$(value ExecStartPre)
start=$(value ExecStart)
[ "$(value Type)" = notify ] || { echo "fastedge-serve.service is not Type=notify" >&2; exit 1; }
# Listen where the test says: an operator's edit of the configuration file.
sed -i "s/^listen = \[\"127.0.0.1:8443\"\]/listen = [\"127.0.0.1:$port\"]/" "$root/etc/fastedge/serve.toml"
grep -q "127.0.0.1:$port" "$root/etc/fastedge/serve.toml" || { echo "could not set the port" >&2; exit 1; }
# What systemd does before ExecStart: the state directory, owned by the unit's user.
mkdir -p "$root$state"
chroot "$root" chown "$user:$user" "$state"
chmod 0700 "$root$state"
# And its runtime directory (the upgrade socket lives there).
runtime=/run/$(value RuntimeDirectory)
mkdir -p "$root$runtime"
chroot "$root" chown "$user:$user" "$runtime"
chmod "$(value RuntimeDirectoryMode)" "$root$runtime"
chroot "$root" runuser -u "$user" -- env $environment $pre
echo "ExecStartPre ran: $pre"
# The notify socket systemd would give (inside the copy, where the service can reach it): the
# datagrams until READY=1 go to $1.
notify_listener() {
  rm -f "$root/run/notify.sock"
  python3 - "$root/run/notify.sock" > "$1" 2>&1 <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
s.settimeout(30)
while True:
    text = s.recv(4096).decode()
    print(text, flush=True)
    if "READY=1" in text.splitlines():
        break
PY
  listener=$!
  for _ in $(seq 50); do [ -S "$root/run/notify.sock" ] && break; sleep 0.1; done
}
notify_listener "$base/notify.txt"
chroot "$root" runuser -u "$user" -- env $environment NOTIFY_SOCKET=/run/notify.sock $start > "$base/serve.log" 2>&1 &
service=$!
wait "$listener" || { echo "no READY=1 from the service; its log:" >&2; cat "$base/serve.log" >&2; pkill -f "^/usr/bin/fastedge serve --config /etc/fastedge/serve.toml"; exit 1; }
echo "service said: $(tr '\n' ' ' < "$base/notify.txt")"
pid=$(pgrep -n -f "^/usr/bin/fastedge serve --config /etc/fastedge/serve.toml" || true)
stop_service() { kill -TERM "${pid:-$service}" 2>/dev/null || true; wait "$service" || true; }
uid=$(ps -o uid= -p "${pid:-0}" 2>/dev/null | tr -d ' ')
[ "$uid" = "$(chroot "$root" id -u "$user")" ] || { echo "the service runs as uid '$uid', not $user" >&2; stop_service; exit 1; }
echo "running as: $user (uid $uid)"
status=$(curl --silent --insecure --max-time 10 -o "$base/body" -w '%{http_code}' "https://127.0.0.1:$port/installed")
echo "GET https://127.0.0.1:$port/installed: $status"
[ "$status" = 200 ] || { echo "expected 200; service log:" >&2; cat "$base/serve.log" >&2; stop_service; exit 1; }
grep -q "GET /installed" "$base/body" || { echo "unexpected body: $(cat "$base/body")" >&2; stop_service; exit 1; }
# A binary upgrade the way the unit says (systemctl kill -s USR2 --kill-whom=main): the running
# process starts the binary again, which takes the listening sockets and tells the service
# manager it is the main process now; the old one drains and exits.
notify_listener "$base/notify2.txt"
kill -USR2 "$pid"
if ! wait "$listener"; then
  echo "no READY=1 from the successor; log:" >&2; cat "$base/serve.log" >&2; stop_service; exit 1
fi
successor=$(sed -n 's/^MAINPID=//p' "$base/notify2.txt" | head -n 1)
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null || [ -z "$successor" ] || [ "$successor" = "$pid" ]; then
  echo "upgrade: old $pid still running or no new main pid ($successor)" >&2; cat "$base/serve.log" >&2
  kill "$pid" "$successor" 2>/dev/null; exit 1
fi
echo "upgraded: main process $pid -> $successor (said MAINPID and READY=1; the old one exited)"
pid=$successor
status=$(curl --silent --insecure --max-time 10 -o "$base/body" -w '%{http_code}' "https://127.0.0.1:$port/upgraded")
kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
wait "$service" 2>/dev/null || true
echo "GET https://127.0.0.1:$port/upgraded: $status"
[ "$status" = 200 ] || { echo "expected 200 after the upgrade; log:" >&2; cat "$base/serve.log" >&2; exit 1; }
# Purge takes everything back out.
chroot "$root" dpkg --purge fastedge >/dev/null
if chroot "$root" id fastedge >/dev/null 2>&1 || [ -e "$root/usr/bin/fastedge" ]; then
  echo "purge left the user or the binary behind" >&2; exit 1
fi
echo "purged: user, binary and state gone"
echo "install test passed"
