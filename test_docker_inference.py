"""Check a runtime install (the Docker image, or a venv of requirements-runtime.txt) on a WAV file.

    python test_docker_inference.py FILE.wav [--model artifacts/sound_classifier.tflite] [--threads 1]

Loads the model with the TFLite runtime, runs the file through the live loop's analysis
(:class:`fanwatch.live.Analyzer`: the file's channels mixed as the model card says, its native rate resampled
block by block, a window every hop) and prints one line per window (start time, label, confidence, anomaly
score and its ratio to the threshold, inference time), then a summary line (runtime, windows, median and p95
inference time). Exit code 0 on success, 1 with a one-line message on a bad file or model.

Imports only what the Raspberry Pi runtime has: numpy, soxr, a TFLite runtime and fanwatch's runtime
modules. WAV files are read with soundfile when it is installed, else with fanwatch.wavfile (standard library).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fanwatch.config import SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS
from fanwatch.errors import BadAudioError, FanwatchError
from fanwatch.live.analyzer import Analyzer
from fanwatch.runtime import SoundClassifier

DEFAULT_MODEL = Path(__file__).resolve().parent / "artifacts" / "sound_classifier.tflite"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", type=Path, help="audio file (WAV)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="sound_classifier.tflite, card beside it")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    args = parser.parse_args(argv)
    try:
        classifier = SoundClassifier(args.model, num_threads=args.threads)
        analyzer = Analyzer(classifier, channel=classifier.card.channel or "mean")
        results = analyzer.run_file(args.wav)  # the live loop's path: native rate, streaming resampler
        if not results:
            raise BadAudioError(args.wav, f"too short: need at least {WINDOW_SECONDS:.3f} s (one analysis window)")
        for r in results:
            start = (round(r.t * SAMPLE_RATE) - WINDOW_SAMPLES) / SAMPLE_RATE
            print(
                f"t={start:7.2f}s label={r.label} conf={r.confidence:.3f} "
                f"anomaly={float(r.scores[r.machine]):.4f} ratio={r.anomaly:.3f} ms={r.inference_ms:.2f}"
            )
    except FanwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    timings = [r.inference_ms for r in results]
    median, p95 = np.percentile(timings, [50, 95])
    print(f"summary: runtime={classifier.runtime} windows={len(timings)} median_ms={median:.2f} p95_ms={p95:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
