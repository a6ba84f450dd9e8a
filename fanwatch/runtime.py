"""Run an exported fanwatch model: what the Raspberry Pi imports.

Only numpy and a TFLite runtime: ``ai_edge_litert`` (LiteRT, the Pi runtime), else
``tflite_runtime`` (older Pis), else ``tensorflow.lite`` (the training machine). Never TensorFlow
itself when a runtime is installed, never scipy or scikit-learn.

A model is ``sound_classifier.tflite`` with ``model_card.json`` beside it (labels, thresholds,
machine ids, window settings) and, for models trained since the fused score, ``anomaly_scorer.npz``
(the numpy state of :mod:`fanwatch.scorer`). Input: one window of ``WINDOW_SAMPLES`` float32 samples at
16 kHz.

Anomaly decisions go through :meth:`SoundClassifier.anomaly_stream`: one running state per continuous
recording (reset it at a gap), ``update(prediction)`` -> score / threshold (1.0 = the per-window
threshold). A machine the model does not know (``machine=`` not in the card, or none given when the
model knows several) is scored against the pooled normal reference of all known machines;
``scoring()`` says which, for the start event and the console. Models without a scorer state keep the
earlier rule (the model's ``anomaly_score`` output over its threshold, the smallest ratio over the
machines when none is chosen).
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config
from .card import CARD_NAME, MODEL_NAME, ModelCard, read_card, require_model
from .errors import FanwatchError

# What train.py writes into its output folder (see artifacts/README.md); MODEL_NAME and CARD_NAME: fanwatch.card.
__all__ = ["CARD_NAME", "MODEL_NAME", "ModelCard", "Prediction", "SoundClassifier", "TFLiteModel", "read_card"]
FLOAT_NAME = "sound_classifier_float32.tflite"
HEAD_NAME = "sound_classifier_head.keras"
ANOMALY_NAME = "anomaly_model.npz"
SCORER_NAME = "anomaly_scorer.npz"
SPLIT_NAME = "split.json"
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")


def interpreter_class(prefer: str | None = None):
    """The first TFLite Interpreter class that imports, and the runtime's name."""
    order = [prefer] if prefer else list(RUNTIMES)
    errors = []
    for name in order:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert.interpreter import Interpreter
            elif name == "tflite_runtime":
                from tflite_runtime.interpreter import Interpreter
            elif name == "tensorflow":
                import warnings

                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

                import tensorflow as tf

                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
                Interpreter = tf.lite.Interpreter
            else:
                raise FanwatchError(f"unknown TFLite runtime '{name}' (choose from {', '.join(RUNTIMES)})")
            return Interpreter, name
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise FanwatchError(
        f"no TFLite runtime found ({'; '.join(errors)}); install ai-edge-litert (pip install ai-edge-litert)"
    )


_NOISE = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
"""What the TFLite runtimes print on every start, on the C level, whatever TF_CPP_MIN_LOG_LEVEL says: a
newcomer reads it as a problem. :func:`_native_stderr_without_noise` drops these lines and nothing else."""


@contextmanager
def _native_stderr_without_noise():
    """Capture file descriptor 2 (native code writes there directly) and pass on every line but :data:`_NOISE`.

    Used only around loading a model, which happens before any audio thread runs."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True) if line.rstrip() not in _NOISE]
            if kept:
                os.write(2, b"".join(kept))


def load_interpreter(path: str | os.PathLike, num_threads: int = 1, runtime: str | None = None):
    path = require_model(path)
    Interpreter, name = interpreter_class(runtime)
    try:
        with _native_stderr_without_noise():
            interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise FanwatchError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0]})") from None
    return interpreter, name


@dataclass
class Prediction:
    """One window's outputs."""

    probabilities: np.ndarray  # [n_classes]
    anomaly_scores: np.ndarray  # [n_machines], one per known machine id (the model's embedding score)
    embedding: np.ndarray | None = None
    band_levels: np.ndarray | None = None  # [spectral.BAND_FEATURES] (models with a fused score)


class TFLiteModel:
    """A single-window TFLite model with named outputs (a serving signature)."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1, runtime: str | None = None):
        self.path = Path(path)
        self.interpreter, self.runtime = load_interpreter(self.path, num_threads, runtime)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise FanwatchError(f"{self.path}: model has no serving signature (export it with fanwatch)")
        self.signature = next(iter(signatures))
        runner = self.interpreter.get_signature_runner(self.signature)
        inputs = runner.get_input_details()
        outputs = runner.get_output_details()
        self.input_name = next(iter(inputs))
        self.input_shape = tuple(int(d) for d in inputs[self.input_name]["shape"])
        self._input_index = inputs[self.input_name]["index"]
        self._outputs = {name: detail["index"] for name, detail in outputs.items()}
        self.output_names = list(self._outputs)
        self.output_shapes = {name: tuple(int(d) for d in detail["shape"]) for name, detail in outputs.items()}

    def __call__(self, window: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs of one window, by name; copies, never views of the interpreter's memory."""
        self.interpreter.set_tensor(self._input_index, np.asarray(window, dtype=np.float32).reshape(self.input_shape))
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(index)[0] for name, index in self._outputs.items()}


class SoundClassifier:
    """The deployed end-to-end model plus its card: window in, label and anomaly decision out."""

    def __init__(
        self, path: str | os.PathLike, num_threads: int = 1, runtime: str | None = None, machine: str | None = None
    ):
        self.card: ModelCard = read_card(path)
        self.model = TFLiteModel(path, num_threads, runtime)  # first: a damaged file says so itself
        self.sha256 = config.sha256_file(path)  # once: the start record and the site calibration use it too
        expected = self.card.file_sha256.get(Path(path).name)
        if expected is not None and expected != self.sha256:  # the card belongs to this very file
            raise FanwatchError(
                f"{path}: the model file does not match its card (sha256 {self.sha256[:12]}, the card was written "
                f"for {expected[:12]}): copy a model together with its model_card.json and the files beside it"
            )
        self.labels: list[str] = list(self.card.labels)
        self.machines: list[str] = list(self.card.machines)
        self.thresholds = np.asarray(self.card.thresholds, np.float32)
        if self.card.window_samples != config.WINDOW_SAMPLES:
            raise FanwatchError(f"{path}: model was built for another window length")
        outputs = {
            name: self.model.output_shapes[name][-1]
            for name in ("probabilities", "anomaly_score")
            if name in self.model.output_shapes
        }
        if outputs != {"probabilities": len(self.labels), "anomaly_score": len(self.machines)}:
            raise FanwatchError(
                f"{path}: model outputs {outputs} do not match its card "
                f"({len(self.labels)} labels, {len(self.machines)} machines)"
            )
        self.scorer = self._load_scorer(Path(path))
        self.machine = machine
        self.machine_index: int | None = None
        if machine is not None:
            if machine not in self.machines and self.scorer is None:
                raise FanwatchError(f"unknown machine '{machine}': this model knows {', '.join(self.machines)}")
            if machine in self.machines:
                self.machine_index = self.machines.index(machine)
        elif len(self.machines) == 1:
            self.machine_index = 0

    def _load_scorer(self, path: Path):
        if self.card.score_file is None:
            return None
        from .scorer import Scorer

        state = path.with_name(self.card.score_file)
        if not state.is_file():
            raise FanwatchError(f"{state} not found: the anomaly-score state must sit beside the model")
        scorer = Scorer.load(state)
        if scorer.machines != self.machines:
            raise FanwatchError(f"{state}: machines {scorer.machines} differ from the model card's {self.machines}")
        if "embedding" in scorer.config.weights and "embedding" not in self.model.output_names:
            raise FanwatchError(f"{path}: the anomaly score needs the model's embedding output")
        return scorer

    @property
    def unknown_machine(self) -> bool:
        """True when the recording's machine is not one the model knows (or not said, with several known)."""
        if self.machine is not None:
            return self.machine not in self.machines
        return len(self.machines) > 1

    def score_target(self) -> str:
        """The scorer reference used: the machine's own, else the pooled one."""
        from .scorer import POOLED

        if self.unknown_machine:
            return POOLED
        return self.machine if self.machine is not None else self.machines[0]

    def scoring(self) -> dict:
        """Which reference the anomaly score compares with: for the start event, the console and metrics."""
        unknown = self.unknown_machine
        if self.scorer is None:
            return {
                "machine": self.machine,
                "unknown_machine": unknown,
                "scored_as": "closest known machine" if unknown else self.machines[self.machine_index],
                "rule": "smallest score/threshold over the known machines (a model without a fused score)"
                if unknown
                else "this machine's normal reference",
            }
        from .scorer import UNKNOWN_MACHINE_RULE

        target = self.score_target()
        return {
            "machine": self.machine,
            "unknown_machine": unknown,
            "scored_as": "pooled normal reference of all known machines" if unknown else target,
            "rule": UNKNOWN_MACHINE_RULE if unknown else "this machine's normal reference",
            "threshold": self.scorer.threshold(target),
            "horizon_windows": self.scorer.config.horizon,
        }

    def anomaly_stream(self, hop_s: float | None = None) -> AnomalyStream | StatelessAnomaly:
        """A new running anomaly state (one per continuous recording): ``update(prediction)`` -> (machine index,
        score / threshold), ``reset()`` at a gap. ``hop_s``: the hop the windows come at, when it is not the
        model card's: the score's horizon keeps its length in seconds (the threshold was set for it)."""
        return AnomalyStream(self, hop_s) if self.scorer is not None else StatelessAnomaly(self)

    @property
    def runtime(self) -> str:
        return self.model.runtime

    def predict(self, window: np.ndarray) -> Prediction:
        out = self.model(window)
        return Prediction(
            probabilities=out["probabilities"],
            anomaly_scores=out["anomaly_score"],
            embedding=out.get("embedding"),
            band_levels=out.get("band_levels"),
        )

    def anomaly(self, scores: np.ndarray) -> tuple[int, float]:
        """(machine whose threshold applies, score over that threshold) for the model's own embedding score
        (``anomaly_score`` output): the chosen machine; with several and none chosen, the closest one (the
        smallest ratio). The deployed decision of a model with a fused score is ``anomaly_stream()``'s."""
        ratios = np.asarray(scores, np.float32) / self.embedding_thresholds
        index = int(np.argmin(ratios)) if self.machine_index is None else self.machine_index
        return index, float(ratios[index])

    def anomaly_ratio(self, scores: np.ndarray) -> float:
        """Score over threshold for the chosen machine; with several and none chosen, the closest one."""
        return self.anomaly(scores)[1]

    @property
    def embedding_thresholds(self) -> np.ndarray:
        """Thresholds of the model's ``anomaly_score`` output (the card's thresholds for older models)."""
        if self.card.embedding_thresholds is not None:
            return np.asarray(self.card.embedding_thresholds, np.float32)
        return self.thresholds


class StatelessAnomaly:
    """The anomaly state of a classifier whose decision needs no history: its ``anomaly(scores)`` per window."""

    def __init__(self, classifier):
        self.classifier = classifier

    settling = False  # one window is the whole score
    settle_windows = 0
    horizon = None

    @property
    def channel_ratios(self) -> dict:
        return {}  # no side channels

    def reset(self) -> None:
        pass

    def update(self, prediction) -> tuple[int, float]:
        return self.classifier.anomaly(prediction.anomaly_scores)


class AnomalyStream:
    """The running anomaly state of one continuous recording: ``update(prediction)`` -> (machine index, score /
    threshold); the index is -1 when the pooled reference (an unknown machine) is used."""

    def __init__(self, classifier: SoundClassifier, hop_s: float | None = None):
        from .scorer import POOLED

        self.classifier = classifier
        self.scoring = classifier.scoring()
        self.name = classifier.score_target()
        self.index = classifier.machines.index(self.name) if self.name != POOLED else -1
        horizon = classifier.scorer.config.horizon
        if hop_s is not None:  # the same span of audio as in training at another hop
            horizon = max(1, round(horizon * classifier.card.hop_seconds / hop_s))
        self.horizon = horizon
        self._stream = classifier.scorer.stream(self.name, horizon)
        self.threshold = self._stream.threshold
        scorer = classifier.scorer
        self.channel_thresholds = {ch: scorer.channel_threshold(self.name, ch) for ch in scorer.config.channels}
        self.channel_ratios: dict = {}  # the last window's side-channel ratios (score / its threshold)
        # a median over fewer windows than half the horizon is one odd window's (the splice of a device's
        # start-up, the first window after a gap): the alert rules wait until it is not
        self.settle_windows = max(1, horizon // 2)
        self._windows = 0

    @property
    def settling(self) -> bool:
        """True while the horizon holds too few windows for the score to count towards an alert."""
        return self._windows < self.settle_windows

    def reset(self) -> None:
        """Forget the horizon (a gap in the audio, a restart)."""
        self._stream.reset()
        self._windows = 0

    def update(self, prediction: Prediction) -> tuple[int, float]:
        if prediction.band_levels is None or prediction.embedding is None:
            raise FanwatchError("the model gives no band_levels/embedding output, which its anomaly score needs")
        self._windows += 1
        fused, side = self._stream.update_channels(prediction.embedding, prediction.band_levels)
        self.channel_ratios = {ch: side[ch] / t for ch, t in self.channel_thresholds.items()}
        return self.index, fused / self.threshold
