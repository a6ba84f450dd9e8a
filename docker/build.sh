#!/usr/bin/env bash
# Build the fanwatch runtime image (see Dockerfile) for linux/arm64 (Raspberry Pi) or linux/amd64.
#
# Usage: docker/build.sh [options]
#   -p, --platform P   arm64 | amd64 | linux/arm64 | linux/amd64 (default: this machine's)
#   -t, --tag NAME     image name (default: fanwatch:latest for this machine's platform,
#                      fanwatch:<arch> for the other one)
#   -m, --model-dir D  folder with sound_classifier.tflite + model_card.json to bake into the image
#                      (default artifacts/; when it has no model the image has none: mount one at run time)
#   -e, --engine E     auto | docker | buildah (default auto: docker when `docker info` answers)
#   -h, --help         show this text
#
# Steps, each skipped when its result is already there (the script is safe to re-run):
#   0. stage the model into build/model/ (copied fresh each time)
#   1. download the wheels of requirements-runtime.txt for the target platform into build/wheels/
#      (on the host, with pip; the image build installs only from there, with no index)
#   2. with a Docker engine: `docker build --platform linux/<arch>`, the base pulled as usual.
#      Without one (buildah engine): install buildah, podman, runc, mmdebstrap (and qemu-user-static
#      + binfmt for a foreign platform) with apt-get when missing; build a debian:bookworm-slim
#      stand-in with mmdebstrap into build/base/ and import it (localhost/fanwatch-base:bookworm-slim-<arch>,
#      tagged docker.io/library/debian:bookworm-slim for the build, so nothing is ever pulled);
#      then `buildah bud --isolation chroot --pull=never`.
#   3. print the image's size.
# Everything downloaded lands under build/ (git-ignored). With buildah, images live in the vfs
# storage under /var/lib/containers/storage; run them with docker/run.sh (podman with the flags
# this kind of machine needs).
#
# Environment: PYTHON (python with pip for step 1, default python3), FANWATCH_CONTAINERS_CONF
# (containers.conf to use, default build/containers/containers.conf, written by this script).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
log() { printf '[build.sh] %s\n' "$*" >&2; }
die() { printf '[build.sh] error: %s\n' "$*" >&2; exit 1; }

host_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) uname -m ;;
    esac
}

PLATFORM=""
TAG=""
ENGINE=auto
MODEL_DIR=artifacts
while [ $# -gt 0 ]; do
    case "$1" in
        -p | --platform) PLATFORM="${2:?--platform needs a value}"; shift 2 ;;
        --platform=*) PLATFORM="${1#*=}"; shift ;;
        -t | --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) TAG="${1#*=}"; shift ;;
        -m | --model-dir) MODEL_DIR="${2:?--model-dir needs a value}"; shift 2 ;;
        --model-dir=*) MODEL_DIR="${1#*=}"; shift ;;
        -e | --engine) ENGINE="${2:?--engine needs a value}"; shift 2 ;;
        --engine=*) ENGINE="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

ARCH="${PLATFORM#linux/}"
ARCH="${ARCH:-$(host_arch)}"
case "$ARCH" in
    arm64 | aarch64) ARCH=arm64; PY_ARCH=aarch64 ;;
    amd64 | x86_64) ARCH=amd64; PY_ARCH=x86_64 ;;
    *) die "unsupported platform '$PLATFORM' (use arm64 or amd64)" ;;
esac
if [ -z "$TAG" ]; then
    if [ "$ARCH" = "$(host_arch)" ]; then TAG=fanwatch:latest; else TAG="fanwatch:$ARCH"; fi
fi

BUILD="$ROOT/build"
mkdir -p "$BUILD"
START=$(date +%s)

# ---------------------------------------------------------------------------------------------
# 0. model
rm -rf "$BUILD/model"
mkdir -p "$BUILD/model"
if [ -f "$MODEL_DIR/sound_classifier.tflite" ]; then
    [ -f "$MODEL_DIR/model_card.json" ] || die "$MODEL_DIR/model_card.json missing beside the model"
    cp "$MODEL_DIR/sound_classifier.tflite" "$MODEL_DIR/model_card.json" "$BUILD/model/"
    log "model: $MODEL_DIR/sound_classifier.tflite baked in as /app/artifacts/"
else
    log "no model in $MODEL_DIR/: the image has none (mount one: -v \"\$PWD/artifacts:/app/artifacts:ro\")"
fi
printf 'Model folder of the fanwatch image: sound_classifier.tflite + model_card.json (or mount one here).\n' \
    >"$BUILD/model/README.txt"

# ---------------------------------------------------------------------------------------------
# 1. wheelhouse
download_wheels() {
    local py="${PYTHON:-python3}" plats=() v
    for v in 28 27 26 17; do plats+=(--platform "manylinux_2_${v}_${PY_ARCH}"); done
    plats+=(--platform "manylinux2014_${PY_ARCH}")
    log "wheels for linux/$ARCH, Python 3.11 -> build/wheels/"
    "$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        "${plats[@]}" --python-version 3.11 --implementation cp \
        -r requirements-runtime.txt -d "$BUILD/wheels"
}
download_wheels

# ---------------------------------------------------------------------------------------------
# 2a. Docker engine
if [ "$ENGINE" = auto ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=buildah; fi
fi

if [ "$ENGINE" = docker ]; then
    log "docker build --platform linux/$ARCH -t $TAG"
    docker build --platform "linux/$ARCH" -t "$TAG" .
    SIZE=$(docker image inspect --format '{{.Size}}' "$TAG")
    log "built $TAG (linux/$ARCH) in $(( $(date +%s) - START )) s: $(( SIZE / 1000000 )) MB ($SIZE bytes, uncompressed)"
    exit 0
fi
[ "$ENGINE" = buildah ] || die "unknown engine '$ENGINE' (auto, docker or buildah)"

# ---------------------------------------------------------------------------------------------
# 2b. buildah + podman, local base image
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
# FROM debian:bookworm-slim resolves to the stand-in for this platform (retagged on every build)
"${BUILDAH[@]}" tag "$BASE_NAME" docker.io/library/debian:bookworm-slim

OLD_ID=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
log "buildah bud --platform linux/$ARCH -t $TAG"
"${BUILDAH[@]}" bud --isolation chroot --pull=never --platform "linux/$ARCH" -t "$TAG" -f Dockerfile .
NEW_ID=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG")
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
    # the previous build of this tag is now untagged: free its space (vfs keeps full copies)
    "${PODMAN[@]}" rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
SIZE=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG")
log "built $TAG (linux/$ARCH) in $(( $(date +%s) - START )) s: $(( SIZE / 1000000 )) MB ($SIZE bytes, uncompressed)"
log "run: docker/run.sh --device /dev/snd -v \"\$PWD/artifacts:/app/artifacts:ro\" $TAG"
