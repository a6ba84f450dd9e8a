# fanwatch runtime: the real-time loop (inference.py) for a Raspberry Pi (linux/arm64) or a PC (linux/amd64).
#
# Build:  docker/build.sh [--platform arm64|amd64] [--tag NAME]
#         (it first downloads the wheels of requirements-runtime.txt into build/wheels/, which this file
#         installs from, with no package index: the build itself never reaches PyPI)
# Run:    docker run --rm -it --device /dev/snd fanwatch [inference.py options]
#         model: build.sh stages sound_classifier.tflite, model_card.json (+ anomaly_scorer.npz, ...) of artifacts/ (or of
#         --model-dir DIR) into build/model/, baked in as /app/artifacts/ (none there: mount one); any
#         model can be mounted over it at run time: -v "$PWD/artifacts:/app/artifacts:ro"
#         check without a microphone:
#         docker run --rm -v "$PWD/clips:/clips:ro" --entrypoint python3 fanwatch test_docker_inference.py /clips/a.wav
# The user is in group audio (gid 29, as on Debian and Raspberry Pi OS); if /dev/snd on the host
# belongs to another gid, add --group-add <that gid>.

# The base of both stages. docker/build.sh on a machine without a Docker engine passes a local stand-in
# (docker/standin-base.sh) with --build-arg BASE=...; everywhere else it is the public image.
ARG BASE=debian:bookworm-slim

# ---- builder: a venv with the pinned wheels, trimmed ------------------------------------------------
FROM ${BASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv binutils \
    && rm -rf /var/lib/apt/lists/*

COPY requirements-runtime.txt /tmp/requirements-runtime.txt
COPY build/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        -r /tmp/requirements-runtime.txt \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

# Parts of the wheels the Interpreter never loads (about 55 MB on amd64, 40 MB on arm64):
#   ai_edge_litert: the WebGPU accelerator, libLiteRt.so (both only for the CompiledModel API;
#   __init__ loads libLiteRt.so only if it exists), NPU vendor dispatch libraries, AOT compiler
#   and model tools; numpy: its test suites and type stubs.
# test_docker_inference.py runs the model in the finished image, so a missing piece shows there.
RUN sp=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$sp"/ai_edge_litert/libLiteRtWebGpuAccelerator.so "$sp"/ai_edge_litert/libLiteRt.so \
        "$sp"/ai_edge_litert/vendors "$sp"/ai_edge_litert/aot "$sp"/ai_edge_litert/tools \
    && find "$sp"/numpy -depth -type d -name tests -exec rm -rf {} + \
    && find "$sp" -name '*.pyi' -delete \
    && echo "[size] venv after the wheels' unused parts: $(du -sm /opt/venv | cut -f1) MB"

# numpy's build and packaging tools and test-only extension modules, never imported at run time
# (numpy loads f2py and distutils lazily, on first use; soxr needs numpy.typing): about 5 MB. Then the
# symbol tables of LiteRT's libraries (--strip-unneeded keeps what the dynamic linker needs): about 4 MB.
# Not numpy's: auditwheel rewrote those with patchelf, and stripped they no longer load.
RUN sp=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$sp"/numpy/f2py "$sp"/numpy/distutils "$sp"/numpy/_pyinstaller \
        "$sp"/numpy/_core/include "$sp"/numpy/_core/lib "$sp"/numpy/random/lib "$sp"/numpy/random/_examples \
        "$sp"/numpy/_core/_simd.* "$sp"/numpy/_core/_multiarray_tests.* "$sp"/numpy/_core/_umath_tests.* \
        "$sp"/numpy/_core/_rational_tests.* "$sp"/numpy/_core/_struct_ufunc_tests.* \
        "$sp"/numpy/_core/_operand_flag_tests.* "$sp"/numpy/conftest.py \
    && echo "[size] venv without numpy's tools: $(du -sm /opt/venv | cut -f1) MB" \
    && find "$sp"/ai_edge_litert -name '*.so' -type f -exec strip --strip-unneeded {} + \
    && echo "[size] venv with stripped libraries: $(du -sm /opt/venv | cut -f1) MB"

# ---- system: Debian's Python 3.11 (as on Raspberry Pi OS Bookworm), PortAudio, the venv and the app -------
# debian:bookworm-slim + Debian's python3 rather than python:3.11-slim-bookworm: the same Python 3.11 and
# Debian base as Raspberry Pi OS Bookworm, security updates through apt (rebuild the image to get them).
FROM ${BASE} AS system

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libportaudio2 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --gid audio --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin fanwatch

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# .dockerignore lets through only the runtime modules, inference.py and test_docker_inference.py.
COPY fanwatch/ fanwatch/
COPY *.py ./
RUN python3 -m compileall -q fanwatch
COPY build/model/ artifacts/
COPY docker/rootfs.sh /usr/local/bin/rootfs.sh
RUN rootfs.sh /rootfs

# ---- runtime: only the hand-picked file set, no apt, dpkg, perl or shell (about 80 MB less) ----------------
FROM scratch

LABEL org.opencontainers.image.title="fanwatch" \
      org.opencontainers.image.description="Real-time fan state and anomaly detection (YAMNet + TFLite)"

COPY --from=system /rootfs/ /
ENV PATH=/opt/venv/bin:/usr/bin:/bin \
    PYTHONUNBUFFERED=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app

# Liveness without a web server: the loop rewrites $FANWATCH_HEARTBEAT every few seconds while it analyses
# audio (the variable is also the default of its --heartbeat); the check fails when the last analysed
# window is over 60 s old: a dead or unplugged microphone, or a stuck loop, turns the container unhealthy.
# Start period: a Raspberry Pi 3B+ needs about half a minute to import numpy and load the model, and a
# microphone that is not there yet costs a restart or two.
ENV FANWATCH_HEARTBEAT=/tmp/fanwatch-heartbeat
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python3", "-m", "fanwatch.health", "--max-age", "60"]

USER 10001
# Exec form, no shell and no init: python3 is PID 1 and gets the signals itself. The loop
# (fanwatch.live) ends cleanly on SIGINT and SIGTERM. As PID 1, Python would ignore a SIGTERM that
# comes before those handlers are set (while the model loads), but it always turns SIGINT into
# KeyboardInterrupt, so `docker stop` sends SIGINT: a clean stop at any moment, as with Ctrl-C.
STOPSIGNAL SIGINT
ENTRYPOINT ["python3", "inference.py"]
