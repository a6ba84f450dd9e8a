#!/usr/bin/env bash
# A stand-in for debian:bookworm-slim on machines with no Docker engine and no registry access
# (buildah + podman only): used by docker/build.sh --engine buildah, which passes the image it prints
# to the build as --build-arg BASE=... (the Dockerfile's default, debian:bookworm-slim, is never retagged).
#
# Usage: docker/standin-base.sh ARCH   (arm64 | amd64); prints the base image name on stdout.
#
# Installs buildah, podman, runc, mmdebstrap (and qemu-user-static + binfmt for a foreign platform) with
# apt-get when missing; writes a containers.conf for this kind of machine (build/containers/, or
# $FANWATCH_CONTAINERS_CONF; docker/run.sh uses it too); builds a Debian bookworm minbase slimmed like
# the official slim image with mmdebstrap into build/base/ and imports it as
# localhost/fanwatch-base:bookworm-slim-<arch>. Each step is skipped when its result is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[standin-base.sh] %s\n' "$*" >&2; }
die() { printf '[standin-base.sh] error: %s\n' "$*" >&2; exit 1; }

host_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) uname -m ;;
    esac
}

ARCH="${1:?usage: docker/standin-base.sh arm64|amd64}"
case "$ARCH" in
    arm64) PY_ARCH=aarch64 ;;
    amd64) PY_ARCH=x86_64 ;;
    *) die "unsupported architecture '$ARCH' (use arm64 or amd64)" ;;
esac
BUILD="$ROOT/build"
mkdir -p "$BUILD"
exec 3>&1 1>&2  # everything but the image name goes to stderr

apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*: install them (apt-get install $*) or run as root"
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
for tool in buildah podman runc mmdebstrap; do
    command -v "$tool" >/dev/null || need=(buildah podman runc mmdebstrap uidmap containernetworking-plugins)
done
if [ "$ARCH" != "$(host_arch)" ]; then
    command -v arch-test >/dev/null || need+=(arch-test)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    [ -e "/usr/libexec/qemu-binfmt/${PY_ARCH}-binfmt-P" ] || [ -e "/usr/bin/qemu-${PY_ARCH}-static" ] \
        || need+=(qemu-user-static)
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

if [ "$ARCH" != "$(host_arch)" ]; then
    # foreign binaries run through qemu-user (binfmt_misc, "F" flag so it works inside chroots)
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
    fi
    [ -e "/proc/sys/fs/binfmt_misc/qemu-${PY_ARCH}" ] || update-binfmts --enable "qemu-${PY_ARCH}" \
        || die "cannot enable qemu-${PY_ARCH} in binfmt_misc"
fi

# containers.conf for this machine: no default ulimits (not allowed here), runc, cgroupfs
CONF="${FANWATCH_CONTAINERS_CONF:-$BUILD/containers/containers.conf}"
if [ ! -f "$CONF" ]; then
    mkdir -p "$(dirname "$CONF")"
    cat >"$CONF" <<'EOF'
# written by docker/build.sh
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
fi
export CONTAINERS_CONF="$CONF"
BUILDAH=(buildah --storage-driver vfs)
PODMAN=(podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs)

BASE_NAME="localhost/fanwatch-base:bookworm-slim-$ARCH"
BASE_TAR="$BUILD/base/debian-bookworm-slim-$ARCH.tar"
if ! "${BUILDAH[@]}" inspect --type image "$BASE_NAME" >/dev/null 2>&1; then
    if [ ! -s "$BASE_TAR" ]; then
        log "mmdebstrap: Debian bookworm minbase for $ARCH, slimmed like debian:bookworm-slim"
        mkdir -p "$BUILD/base"
        # the dpkg path filters and apt settings (no docs, no package cache) of the official slim image,
        # kept in the image so that later apt-get installs stay slim too
        mmdebstrap --variant=minbase --arch="$ARCH" --mode=root --format=tar \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/groff/*' \
            --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='path-exclude=/usr/share/linda/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
            --aptopt='Acquire::Languages "none"' --aptopt='APT::AutoRemove::SuggestsImportant "false"' \
            --aptopt='Acquire::GzipIndexes "true"' --aptopt='Dir::Cache::pkgcache ""' \
            --aptopt='Dir::Cache::srcpkgcache ""' \
            --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
            --aptopt='APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log "$1"/var/log/apt/*' \
            bookworm "$BASE_TAR.tmp" \
            "deb http://deb.debian.org/debian bookworm main" \
            "deb http://deb.debian.org/debian bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main"
        mv "$BASE_TAR.tmp" "$BASE_TAR"
    fi
    log "import $BASE_TAR as $BASE_NAME"
    "${PODMAN[@]}" import --quiet --os linux --arch "$ARCH" --change 'CMD ["bash"]' \
        --message "debian:bookworm-slim stand-in built by docker/build.sh" "$BASE_TAR" "$BASE_NAME" >/dev/null
else
    log "base image $BASE_NAME already present"
fi
echo "$BASE_NAME" >&3

