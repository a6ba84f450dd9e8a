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
# Steps (safe to re-run):
#   0. stage the model into build/model/ (copied fresh each time)
#   1. download the wheels of requirements-runtime.txt for the target platform into build/wheels/
#      (on the host, with pip; the image build installs only from there, with no index)
#   2. docker: `docker build --platform linux/<arch>`, the base (debian:bookworm-slim) pulled as usual.
#      buildah (machines with no Docker engine and no registry): docker/standin-base.sh prepares the
#      tools and a local debian:bookworm-slim stand-in, passed to the build as --build-arg BASE=...;
#      then `buildah bud --isolation chroot --pull=never`.
#   3. print the image's size.
# Everything downloaded lands under build/ (git-ignored). With buildah, images live in the vfs
# storage under /var/lib/containers/storage; run them with docker/run.sh.
#
# Environment: PYTHON (python with pip for step 1, default python3), FANWATCH_CONTAINERS_CONF
# (containers.conf for buildah/podman, default build/containers/containers.conf, see standin-base.sh).
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
# 2b. buildah with a local stand-in base
BASE=$(docker/standin-base.sh "$ARCH")
export CONTAINERS_CONF="${FANWATCH_CONTAINERS_CONF:-$BUILD/containers/containers.conf}"
BUILDAH=(buildah --storage-driver vfs)
PODMAN=(podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs)

OLD_ID=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
log "buildah bud --platform linux/$ARCH --build-arg BASE=$BASE -t $TAG"
"${BUILDAH[@]}" bud --isolation chroot --pull=never --platform "linux/$ARCH" --build-arg "BASE=$BASE" \
    -t "$TAG" -f Dockerfile .
NEW_ID=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG")
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
    # the previous build of this tag is now untagged: free its space (vfs keeps full copies)
    "${PODMAN[@]}" rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
SIZE=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG")
log "built $TAG (linux/$ARCH) in $(( $(date +%s) - START )) s: $(( SIZE / 1000000 )) MB ($SIZE bytes, uncompressed)"
log "run: docker/run.sh --device /dev/snd -v \"\$PWD/artifacts:/app/artifacts:ro\" $TAG"
