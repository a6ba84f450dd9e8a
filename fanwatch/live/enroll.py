"""``inference.py --enroll SECONDS``: listen to normal running on site, in memory only, and write the site
calibration beside the model (:mod:`fanwatch.site`).

The audio goes through the live loop's own path (source, bounded queue, :class:`Analyzer`): from the
microphone for SECONDS, or the first SECONDS of ``--wav FILE``. Nothing but the site calibration (window
embeddings, thresholds, figures) is written; no audio.

Runtime module.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .. import bands, config, runtime, site
from ..card import read_card, resolve_channel
from ..errors import FanwatchError
from .analyzer import Analyzer
from .blocks import END_OF_STREAM, BlockQueue
from .settings import LoopSettings, check_hop
from .stats import LoopStats
from .supervisor import make_source, resolve_hop


def listen(settings: LoopSettings, seconds: float, classifier=None, out=None, stop: threading.Event | None = None):
    """(classifier, window results, audio RMS, source description) of the first ``seconds`` of the input."""
    out = out or sys.stdout
    stop = stop or threading.Event()
    source = make_source(settings)
    try:
        m = settings.model
        card = classifier.card if classifier is not None else read_card(m.path)
        channel, _ = resolve_channel(settings.input.channel, card)
        hop, _ = resolve_hop(m.hop, card)
        check_hop(hop)
        source.prepare(channel)
        if classifier is None:
            classifier = runtime.SoundClassifier(m.path, m.threads, m.runtime, m.machine)
        analyzer = Analyzer(
            classifier, hop, channel, settings.decisions, skip_silent_channels=settings.input.wav is None
        )  # the model alone, no site
        stats = LoopStats()
        bq = BlockQueue(settings.input.queue_blocks, stats)
        need = max(1, int(math.floor((seconds - config.WINDOW_SECONDS) / hop + 1e-9)) + 1)
        results, power, frames = [], 0.0, 0
        info = source.open(bq, 1)
        what = info.get("device") or info.get("file")
        print(
            f"enrolling: listening to {what} for {seconds:g} s of normal running (audio stays in memory)",
            file=out,
            flush=True,
        )
        deadline = time.monotonic() + seconds * 3 + 10  # a live device delivers in real time
        while len(results) < need and not stop.is_set():
            if time.monotonic() > deadline:
                why = f" (unusable input: {analyzer.first_fault})" if analyzer.first_fault else ""
                raise FanwatchError(f"enrollment: {what} delivered too little usable audio in time{why}")
            try:
                block = bq.get(timeout=0.2)
            except queue.Empty:
                block = None
            if block is None:
                lost = source.health()
                if lost:
                    raise FanwatchError(f"enrollment: input lost ({lost})")
                continue
            if block is END_OF_STREAM:
                results += analyzer.finish()
                break
            power += float(np.sum(np.asarray(block.data, np.float64) ** 2) / max(block.data.shape[1], 1))
            frames += len(block.data)
            results += analyzer.feed_block(block)
        return classifier, results[:need], math.sqrt(power / frames) if frames else 0.0, what, hop
    finally:
        source.close()


def enroll(settings: LoopSettings, seconds: float, force: bool = False, out=None, classifier=None) -> site.SiteModel:
    out = out or sys.stdout
    if not (seconds > 0 and math.isfinite(seconds)):
        raise FanwatchError(f"--enroll needs a positive number of seconds, got {seconds}")
    settings = dataclasses.replace(
        settings, input=dataclasses.replace(settings.input, fast=settings.input.wav is not None)
    )
    settings.validate()  # a bad option: one line before anything listens
    classifier, results, rms, what, hop = listen(settings, seconds, classifier, out)
    emb = [r.embedding for r in results]
    if results and any(e is None for e in emb):
        raise FanwatchError("this model has no embedding output: it cannot be enrolled on site (retrain it)")
    band_levels = [r.band_levels for r in results]
    sha = classifier.sha256
    channels = classifier.scorer.config.channels if classifier.scorer is not None else ()
    model = site.enroll(
        classifier,
        np.asarray(emb, np.float32) if results else np.zeros((0, 0), np.float32),
        np.asarray(band_levels, np.float32) if results and all(b is not None for b in band_levels) else None,
        np.array([r.anomaly for r in results]),
        np.array([r.probabilities for r in results]),
        rms=rms,
        model_sha256=sha,
        force=force,
        hop_s=hop,
        source=str(what),
        score_config=classifier.scorer.config if classifier.scorer is not None else None,
        channel_ratios={ch: np.array([r.channels.get(ch, np.nan) for r in results]) for ch in channels},
    )
    json_path, _ = model.save(settings.model.path)
    written = [site.SITE_NPZ]
    if write_band_profile(settings.model.path, classifier, results, model.info.get("created", "")):
        written.append(bands.SITE_PROFILE_NAME)
    print(site.describe(model), file=out)
    print(
        f"wrote {json_path} (and {', '.join(written)}); inference.py and evaluate_model.py apply it from now on "
        "(--no-site to ignore it)",
        file=out,
        flush=True,
    )
    return model


def write_band_profile(model_path, classifier, results, created: str) -> bool:
    """The site's normal band levels beside the model (``site_band_profile.json``), so that an alert's "what
    changed" compares with this room and microphone rather than the training recordings' level. From the
    windows the head called a normal state (all of them for a model without normal labels)."""
    card = classifier.card
    normal = set(card.normal_labels) if card is not None and card.normal_labels else None
    use = [r for r in results if r.third_octave is not None and (normal is None or r.label in normal)]
    if not use:
        return False
    trained = bands.load_beside(model_path)
    chosen = trained.for_machine(classifier.machine) if trained is not None else None
    name = chosen[0] if chosen else (classifier.machine or (classifier.machines[0] if classifier.machines else "site"))
    profile = bands.fit_site_profile(
        [r.level_dbfs for r in use],
        np.stack([r.third_octave for r in use]),
        [r.label for r in use],
        name,
        source=f"site enrollment {created}".strip(),
    )
    profile.save(Path(model_path).with_name(bands.SITE_PROFILE_NAME))
    return True
