"""Check a runtime install (the Docker image, or a venv of requirements-runtime.txt) on a WAV file.

    python test_docker_inference.py FILE.wav [--model artifacts/sound_classifier.tflite] [--threads 1]

Loads the model with the TFLite runtime, runs every window of the file through it and prints one line
per window (start time, label, confidence, anomaly score and its ratio to the threshold, inference
time), then a summary line (runtime, windows, median and p95 inference time). Exit code 0 on success,
1 with a one-line message on a bad file or model.

Imports only what the Raspberry Pi runtime has: numpy, soxr, a TFLite runtime and fanwatch's runtime
modules. WAV files are read with soundfile when it is installed, else with fanwatch.wavfile (standard library).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fanwatch.audio import frame_windows, load_audio, resample
from fanwatch.config import HOP_SECONDS, SAMPLE_RATE, WINDOW_SAMPLES
from fanwatch.errors import BadAudioError, FanwatchError
from fanwatch.runtime import SoundClassifier
from fanwatch.wavfile import read_wav

DEFAULT_MODEL = Path(__file__).resolve().parent / "artifacts" / "sound_classifier.tflite"


def read_audio(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz: fanwatch.audio.load_audio (soundfile), else fanwatch.wavfile (stdlib) with
    the same channel mean and the same soxr resampling."""
    try:
        return load_audio(path)
    except ModuleNotFoundError as exc:  # no soundfile in the runtime image
        if exc.name != "soundfile":
            raise
    except OSError as exc:  # soundfile installed but libsndfile missing
        if "sndfile" not in str(exc):
            raise
    samples, rate = read_wav(path)
    signal = resample(samples.mean(axis=1, dtype=np.float32), rate)
    if signal.shape[0] < WINDOW_SAMPLES:
        raise BadAudioError(path, f"too short: {signal.shape[0] / SAMPLE_RATE:.3f} s, need one analysis window")
    return signal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", type=Path, help="audio file (WAV)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="sound_classifier.tflite, card beside it")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    args = parser.parse_args(argv)
    try:
        classifier = SoundClassifier(args.model, num_threads=args.threads)
        windows = frame_windows(read_audio(args.wav))
        timings = []
        for i, window in enumerate(windows):
            start = time.perf_counter()
            prediction = classifier.predict(window)
            ms = (time.perf_counter() - start) * 1000.0
            timings.append(ms)
            probs = np.asarray(prediction.probabilities, np.float32)
            best = int(np.argmax(probs))
            scores = np.asarray(prediction.anomaly_scores, np.float32)
            ratio = classifier.anomaly_ratio(scores)
            index = classifier.machine_index
            if index is None:  # several machines, none chosen: the closest one, as anomaly_ratio does
                index = int(np.argmin(scores / classifier.thresholds))
            print(
                f"t={i * HOP_SECONDS:7.2f}s label={classifier.labels[best]} conf={probs[best]:.3f} "
                f"anomaly={float(scores[index]):.4f} ratio={ratio:.3f} ms={ms:.2f}"
            )
    except FanwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    median, p95 = np.percentile(timings, [50, 95])
    print(f"summary: runtime={classifier.runtime} windows={len(timings)} median_ms={median:.2f} p95_ms={p95:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
