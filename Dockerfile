# fanwatch runtime: the real-time loop (inference.py) for a Raspberry Pi (linux/arm64) or a PC (linux/amd64).
#
# Build:  docker/build.sh [--platform arm64|amd64] [--tag NAME]
#         (it first downloads the wheels of requirements-runtime.txt into build/wheels/, which this file
#         installs from, with no package index: the build itself never reaches PyPI)
# Run:    docker run --rm -it --device /dev/snd fanwatch [inference.py options]
#         model: build.sh stages sound_classifier.tflite + model_card.json of artifacts/ (or of
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

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
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
    && find "$sp" -name '*.pyi' -delete

# ---- runtime ---------------------------------------------------------------------------------------
# debian:bookworm-slim + Debian's python3 rather than python:3.11-slim-bookworm: the same Python 3.11 and
# Debian base as Raspberry Pi OS Bookworm, security updates through apt, and smaller: Debian's Python
# stack adds about 44 MB to the 78 MB base, while python:3.11-slim carries its own /usr/local build with
# pip and setuptools on the same base (not measured here: no registry to pull it from).
FROM ${BASE}

LABEL org.opencontainers.image.title="fanwatch" \
      org.opencontainers.image.description="Real-time fan state and anomaly detection (YAMNet + TFLite)"

# Debian's Python 3.11 (as on Raspberry Pi OS Bookworm) and PortAudio for sounddevice;
# no compilers, no pip, no apt lists.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libportaudio2 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/apt /var/log/*.log \
    && useradd --system --uid 10001 --gid audio --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin fanwatch

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

WORKDIR /app
# .dockerignore lets through only the runtime modules, inference.py and test_docker_inference.py.
COPY fanwatch/ fanwatch/
COPY *.py ./
RUN python3 -m compileall -q fanwatch
COPY build/model/ artifacts/

USER 10001
# Exec form, no shell and no init: python3 is PID 1 and gets the signals itself. The loop
# (fanwatch.live) ends cleanly on SIGINT and SIGTERM. As PID 1, Python would ignore a SIGTERM that
# comes before those handlers are set (while the model loads), but it always turns SIGINT into
# KeyboardInterrupt, so `docker stop` sends SIGINT: a clean stop at any moment, as with Ctrl-C.
STOPSIGNAL SIGINT
ENTRYPOINT ["python3", "inference.py"]
