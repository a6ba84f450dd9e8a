"""The model card: what training writes beside the model and what evaluation and the runtime read back.

One typed record (:class:`ModelCard`), one writer (:func:`write_card`), one reader (:func:`read_card`); both
go through :meth:`ModelCard.from_dict`, so a card that could be written can be read and vice versa. The
file keeps everything training records (data, validation, parity, versions); the typed fields are the ones
code relies on. A card of an unknown format version is refused with one line.

Runtime module: standard library only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import audio, config
from .errors import FanwatchError

FORMAT = "fanwatch-model-card/1"
MODEL_NAME = "sound_classifier.tflite"
CARD_NAME = "model_card.json"


def card_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_name(CARD_NAME)


def require_model(model_path: str | os.PathLike) -> Path:
    """The one "model not found" check."""
    path = Path(model_path)
    if not path.is_file():
        raise FanwatchError(f"model not found: {path} (train one with: python train.py)")
    return path


@dataclass(frozen=True)
class ModelCard:
    labels: tuple[str, ...]
    machines: tuple[str, ...]
    thresholds: tuple[float, ...]  # one per machine, in the order of ``machines``
    threshold_method: str | None = None
    channel: str | int | None = None  # the channel setting training used (None: an older card without one)
    hop_samples: int = config.HOP_SAMPLES
    window_samples: int = config.WINDOW_SAMPLES
    head_target: str = "label"
    normal_labels: tuple[str, ...] = ()
    quantization: str | None = None
    yamnet_path: str | None = None
    yamnet_sha256: str | None = None
    created: str | None = None
    bad_channel: str | None = None  # an unusable channel setting the card records (repr), if any
    # the deployed anomaly score (fanwatch.scorer): its numpy state beside the model; None on older cards, whose
    # thresholds are those of the model's anomaly_score output
    score_file: str | None = None
    embedding_thresholds: tuple[float, ...] | None = None  # of the anomaly_score output, when score_file is set
    alerts: dict = field(default_factory=dict, repr=False, compare=False)  # the calibrated alert rules
    # sha256 of each model file the card describes, by file name (older cards: empty, nothing checked)
    file_sha256: dict = field(default_factory=dict, repr=False, compare=False)
    raw: dict = field(default_factory=dict, repr=False, compare=False)  # the whole card as written

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / config.SAMPLE_RATE

    def thresholds_by_machine(self) -> dict[str, float]:
        return dict(zip(self.machines, self.thresholds))

    @classmethod
    def from_dict(cls, card, where: str | os.PathLike) -> ModelCard:
        """Check the fields the code relies on; one line naming ``where`` for anything wrong."""
        if not isinstance(card, dict):
            raise FanwatchError(f"{where}: not a fanwatch model card (not a JSON object)")
        version = card.get("format", FORMAT)
        if version != FORMAT:
            raise FanwatchError(f"{where}: unknown model card format {version!r} (this fanwatch reads {FORMAT})")
        try:
            labels, machines = tuple(card["labels"]), tuple(card["anomaly"]["machines"])
            thresholds = tuple(float(card["anomaly"]["thresholds"][m]) for m in machines)
            anomaly, settings, yamnet = card["anomaly"], card.get("settings") or {}, card.get("yamnet") or {}
            hop, window = (
                int(card.get("hop_samples", config.HOP_SAMPLES)),
                int(card.get("window_samples", config.WINDOW_SAMPLES)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FanwatchError(f"{where}: not a fanwatch model card (missing or bad {exc})") from None
        if not labels or not machines:
            raise FanwatchError(f"{where}: model card lists no labels or no machines")
        if not isinstance(card["labels"], list) or not all(isinstance(x, str) and x for x in labels):
            raise FanwatchError(f"{where}: model card labels must be a list of names, got {card['labels']!r}")
        if len(set(labels)) != len(labels):
            raise FanwatchError(f"{where}: model card lists a label twice")
        file_sha = card.get("sha256") or {}
        if not isinstance(file_sha, dict):
            raise FanwatchError(f"{where}: model card has a bad sha256 entry")
        if not all(math.isfinite(t) and t > 0 for t in thresholds):
            raise FanwatchError(f"{where}: model card has a threshold that is not a positive number")
        if hop < 1:
            raise FanwatchError(f"{where}: model card has a hop of {hop} samples")
        score_file, embedding_thresholds = None, None
        score = anomaly.get("score")
        if score is not None:
            try:
                score_file = str(score["file"])
                embedding_thresholds = tuple(float(anomaly["embedding_score"]["thresholds"][m]) for m in machines)
            except (KeyError, TypeError, ValueError) as exc:
                raise FanwatchError(f"{where}: model card has a bad anomaly score entry ({exc})") from None
            if Path(score_file).name != score_file or not all(math.isfinite(t) and t > 0 for t in embedding_thresholds):
                raise FanwatchError(f"{where}: model card has a bad anomaly score entry")
        channel = settings.get("channel") if isinstance(settings, dict) else None
        bad_channel = None
        try:
            channel = None if channel is None else audio.parse_channel(channel)
        except FanwatchError:  # only matters when no --channel overrides it: see resolve_channel
            channel, bad_channel = None, repr(channel)
        return cls(
            labels=labels,
            machines=machines,
            thresholds=thresholds,
            threshold_method=anomaly.get("method"),
            channel=channel,
            hop_samples=hop,
            window_samples=window,
            head_target=card.get("head_target", "label"),
            normal_labels=tuple(card.get("normal_labels", [])),
            quantization=card.get("quantization"),
            yamnet_path=yamnet.get("path"),
            yamnet_sha256=yamnet.get("sha256"),
            created=card.get("created"),
            bad_channel=bad_channel,
            score_file=score_file,
            embedding_thresholds=embedding_thresholds,
            alerts=card["alerts"] if isinstance(card.get("alerts"), dict) else {},
            file_sha256={str(k): str(v) for k, v in file_sha.items()},
            raw=card,
        )


def resolve_channel(channel: str | int | None, card: ModelCard | None) -> tuple[str | int, str]:
    """(channel setting, where it came from): an explicit (parsed) one wins, else the training setting the
    model card records, else ``"mean"`` (training's default)."""
    if channel is not None:
        return channel, "command line"
    if card is not None and card.bad_channel is not None:
        raise FanwatchError(
            f"the model card records an invalid channel setting {card.bad_channel}; "
            f"pass --channel ({audio.CHANNEL_HELP})"
        )
    if card is None or card.channel is None:
        return "mean", "default"
    return card.channel, "model card"


def read_card(model_path: str | os.PathLike) -> ModelCard:
    """The card beside ``model_path`` ("model not found" first when the model itself is missing)."""
    path = card_path(require_model(model_path))
    if not path.is_file():
        raise FanwatchError(f"{path} not found: the model card must sit beside the model")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FanwatchError(f"{path}: unreadable model card ({exc})") from None
    return ModelCard.from_dict(card, path)


def write_card(path: str | os.PathLike, card: dict) -> ModelCard:
    """Check ``card`` as the reader will, then write it (atomically); returns the typed card."""
    path = Path(path)
    typed = ModelCard.from_dict({"format": FORMAT, **card}, path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(typed.raw, indent=2) + "\n")
    os.replace(tmp, path)
    return typed
