#!/usr/bin/env bash
# Run a fanwatch image built by docker/build.sh:
#   docker/run.sh [--pi4] [run options...] IMAGE [arguments for inference.py...]
# e.g. docker/run.sh -it --device /dev/snd -v "$PWD/artifacts:/app/artifacts:ro" fanwatch
#      docker/run.sh -v "$PWD/clips:/clips:ro" --entrypoint python3 fanwatch test_docker_inference.py /clips/a.wav
# With a Docker engine: `docker run --rm ...`. Without one: podman on the vfs storage buildah wrote,
# with the flags this kind of machine needs (runc, cgroupfs, no network unless --network is given,
# no default ulimits).
#
# --pi4: run a linux/arm64 image on an x86_64 host under qemu-user (binfmt, set up by
#   `docker/build.sh --platform arm64`) as a Raspberry Pi 4 would see it: QEMU_CPU=cortex-a72 (qemu's
#   default "max" CPU advertises SVE/SME and the like, and LiteRT's XNNPACK kernels then compute wrong
#   numbers under qemu 7.2) and an arm64 /proc/cpuinfo (qemu 7.2 shows the host's x86 one, on which
#   LiteRT's CPU detection segfaults). Timings under emulation mean nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

extra=()
if [ "${1:-}" = --pi4 ]; then
    shift
    cpuinfo="$ROOT/build/qemu/cpuinfo-pi4"
    if [ ! -f "$cpuinfo" ]; then
        mkdir -p "$(dirname "$cpuinfo")"
        n=$(getconf _NPROCESSORS_CONF)  # as many as the host's /sys/devices/system/cpu shows
        for ((i = 0; i < n; i++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
        done >"$cpuinfo"
        printf 'Revision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >>"$cpuinfo"
        chmod 644 "$cpuinfo"
    fi
    extra=(-e QEMU_CPU=cortex-a72 -v "$cpuinfo:/proc/cpuinfo:ro")
fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    exec docker run --rm "${extra[@]}" "$@"
fi
CONF="${FANWATCH_CONTAINERS_CONF:-$ROOT/build/containers/containers.conf}"
[ -f "$CONF" ] || { echo "[run.sh] error: $CONF missing: build the image first (docker/build.sh)" >&2; exit 1; }
export CONTAINERS_CONF="$CONF"
# no network unless asked for (--network host: e.g. a broker on the host's loopback)
net=(--network none)
for arg in "$@"; do
    case "$arg" in --network | --network=* | --net | --net=*) net=() ;; esac
done
exec podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs \
    run --rm "${net[@]}" "${extra[@]}" "$@"
