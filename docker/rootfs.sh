#!/usr/bin/env bash
# Hand-pick the final image's file set into DEST (run in the Dockerfile's "system" stage, where Debian's
# python3, libportaudio2 and ca-certificates are installed and /opt/venv and /app are in place).
#
# Kept: the Python interpreter and its standard library (less the parts a service never imports), the
# venv, /app, the shared libraries that all of those need (the ldd closure of every ELF file kept, plus
# PortAudio, which sounddevice loads by name), ALSA's configuration, the CA bundle, passwd/group, and a
# dpkg status file listing exactly the Debian packages the kept files come from (for image scanners).
# Left out: apt, dpkg, perl, the shell and coreutils, login/passwd tools and every library only they use.
# Prints the size of each part, so the build log says what each step saved.
set -euo pipefail
DEST="${1:?usage: rootfs.sh DEST}"
mkdir -p "$DEST"

mb() { du -sxm "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
say() { printf '[rootfs] %s\n' "$*"; }

say "whole system stage: $(mb --exclude="$DEST" --exclude=/proc --exclude=/sys --exclude=/dev /) MB"

# copy a path (file, symlink or folder) with its parents; for a symlink also what it points to
keep() {
    local p
    for p in "$@"; do
        [ -e "$p" ] || [ -L "$p" ] || continue
        cp -a --parents "$p" "$DEST/" 2>/dev/null || cp -a --parents -n "$p" "$DEST/"
        if [ -L "$p" ]; then keep "$(readlink -f "$p")"; fi
    done
}

# the merged-/usr layout's top-level links (/lib, /lib64, /bin ...), so that ELF interpreters resolve
for link in /bin /sbin /lib /lib32 /lib64 /libx32; do
    if [ -L "$link" ]; then
        cp -a "$link" "$DEST/"
        mkdir -p "$DEST/$(readlink "$link")"
    fi
done

# ---- Python: interpreter and standard library ----------------------------------------------------
PY=$(readlink -f /usr/bin/python3)
STDLIB=/usr/lib/python3.11
say "Debian's python3 standard library: $(mb $STDLIB) MB"
keep /usr/bin/python3 "$PY" /etc/python3.11 /usr/lib/python3/dist-packages $STDLIB
# never imported by the loop: 2to3, pydoc's topics, sqlite3, dbm, curses, readline, tkinter, turtle, the
# CPython test modules (numpy.testing needs unittest, sounddevice ctypes, importlib.metadata email)
for d in lib2to3 pydoc_data sqlite3 dbm curses idlelib tkinter turtledemo ensurepip distutils test \
         turtle.py __pycache__/turtle.cpython-311.pyc lib-dynload/_sqlite3.* lib-dynload/_dbm.* \
         lib-dynload/_gdbm.* lib-dynload/_curses* lib-dynload/readline.* lib-dynload/_test* \
         lib-dynload/_ctypes_test.* lib-dynload/xxlimited* lib-dynload/_xxtestfuzz.* lib-dynload/_tkinter.*; do
    rm -rf "$DEST$STDLIB"/$d
done
say "standard library kept: $(mb "$DEST$STDLIB") MB"
# ctypes.util.find_library("portaudio") (sounddevice) asks `ldconfig -p`, which reads ld.so.cache
keep /usr/sbin/ldconfig /sbin/ldconfig /etc/ld.so.cache /etc/ld.so.conf /etc/ld.so.conf.d

# ---- the application ---------------------------------------------------------------------------------
keep /opt/venv /app /etc/passwd /etc/group /etc/nsswitch.conf /etc/ssl/certs/ca-certificates.crt \
    /usr/share/alsa /etc/alsa
mkdir -p -m 1777 "$DEST/tmp"
say "venv: $(mb "$DEST/opt/venv") MB, /app: $(mb "$DEST/app") MB"

# ---- shared libraries: the ldd closure of every ELF file kept ----------------------------------------
PORTAUDIO=$(find /usr/lib -name 'libportaudio.so.2*' -type f | head -1)
[ -n "$PORTAUDIO" ] || { echo "[rootfs] error: libportaudio not found" >&2; exit 1; }
keep "$(dirname "$PORTAUDIO")"/libportaudio.so.2 "$PORTAUDIO"
elves=$(python3 - "$DEST" <<'PYEOF'
import os, sys
for root, _dirs, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(root, name)
        if not os.path.islink(path):
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    print(path)
PYEOF
)
libs=$(for f in $elves; do ldd "${f#"$DEST"}" 2>/dev/null || ldd "$f" 2>/dev/null; done |
       awk '/=> \// {print $3} /^\t\// {print $1}' | sort -u)
for lib in $libs; do
    case "$lib" in /opt/venv/* | "$DEST"/*) continue ;; esac
    keep "$lib"
done
say "shared libraries (ldd closure + PortAudio): $(mb "$DEST/usr/lib" --exclude="$DEST$STDLIB" --exclude="$DEST/usr/lib/python3") MB"

# ---- which Debian packages the kept files come from ------------------------------------------------
mkdir -p "$DEST/var/lib/dpkg"
# (dpkg knows some files by their pre-merged-/usr path, /lib/... for /usr/lib/...)
pkgs=$(cd "$DEST" && { find usr etc -type f | sed 's|^|/|; p; s|^/usr/|/|' | xargs -r dpkg -S 2>/dev/null || true; } |
       cut -d: -f1 | tr ',' '\n' | sed 's/ //g' | sort -u)
dpkg-query -s $pkgs >"$DEST/var/lib/dpkg/status" 2>/dev/null || true
say "Debian packages with files in the image: $(echo $pkgs | wc -w)"
# folders that cp --parents made (through the /lib -> usr/lib link, say) get the modes of the originals
(cd "$DEST" && find . -mindepth 1 -type d) | while read -r d; do
    src="/${d#./}"
    if [ -d "$src" ]; then chmod --reference="$src" "$DEST/${d#./}"; fi
done
chmod 755 "$DEST"
chmod 1777 "$DEST/tmp"
say "hand-picked root file system: $(mb "$DEST") MB"
