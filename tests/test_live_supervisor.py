"""The supervisor (fanwatch/live/supervisor.py): run() on files and on sources that fail and recover,
the backoff, and the event log of the reporter (report.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from live_common import _classifier, events, kinds, model_copy, model_path, offline, one_error_line, run_cli, scenario

from fanwatch import audio, config, live, runtime


def test_backoff_doubles_and_is_capped():
    gen = live.backoff_delays(1.0, 30.0)
    assert [next(gen) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_event_log_rotates(tmp_path):
    log = tmp_path / "logs" / "events.jsonl"
    reporter = live.Reporter(
        io.StringIO(), live.OutputSettings(event_log=log, event_log_bytes=2048, event_log_backups=2)
    )
    for i in range(200):
        reporter.event("state", t=float(i), **{"from": "a", "to": "b"}, confidence=0.9)
    reporter.close()
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size <= 2048 + 300 for p in log.parent.iterdir())
    assert json.loads(log.read_text().splitlines()[-1])["t"] == 199.0


def test_replay_mixes_channels_as_the_model_was_trained(trained_model, tmp_path):
    """A model trained on channel 1 listens to channel 1 unless told otherwise; "mean" averages all three
    channels of a file, as training's loader does."""
    x = scenario(16000)[: 16000 * 3]
    noise = np.random.default_rng(4).normal(0.0, 0.05, len(x)).astype(np.float32)
    wav = tmp_path / "three.wav"
    sf.write(wav, np.stack([x, 0.5 * x, noise], axis=1), 16000, subtype="FLOAT")

    def set_channel(card):
        card["settings"]["channel"] = 1

    clf = runtime.SoundClassifier(model_copy(trained_model, tmp_path / "ch1", set_channel))
    for channel, origin in ((None, "model card"), ("mean", "command line")):
        records = []
        settings = live.build(path=clf.model.path, wav=wav, fast=True, quiet=True, channel=channel)
        live.run(settings, out=io.StringIO(), classifier=clf, install_signals=False, on_record=records.append)
        start = events(records, "start")[0]
        expected_channel = 1 if channel is None else "mean"
        assert (start["channel"], start["channel_from"]) == (expected_channel, origin)
        expected, _ = offline(clf, audio.load_audio(wav, channel=expected_channel))
        np.testing.assert_allclose([w["anomaly"] for w in kinds(records, "window")], expected, atol=1e-4)
    proc = run_cli(["--wav", wav, "--model", model_path(trained_model), "--channel", 5], timeout=30)
    assert "channel 5 requested but the file has 3 channel(s)" in one_error_line(proc)


def test_hop_option_sets_the_window_rate(trained_model, tmp_path):
    wav = tmp_path / "short.wav"
    sf.write(wav, scenario(16000)[: 16000 * 3], 16000, subtype="PCM_16")
    records = []
    settings = live.build(path=model_path(trained_model), wav=wav, fast=True, hop=0.25, quiet=True)
    summary = live.run(
        settings,
        out=io.StringIO(),
        classifier=_classifier(str(model_path(trained_model))),
        install_signals=False,
        on_record=records.append,
    )
    assert summary["windows"] == audio.n_windows(48000, hop=4000) == len(kinds(records, "window"))


class FlakySource:
    """Fails to open ``fail_opens`` times, then delivers real audio; loses the device once after
    ``lose_after`` blocks of its first successful live."""

    def __init__(self, signal: np.ndarray, rate: int, fail_opens: int = 2, lose_after: int = 25):
        self.signal, self.rate = signal, rate
        self.fail_opens, self.lose_after = fail_opens, lose_after
        self.opens = 0
        self.streams = 0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def describe(self):
        return "flaky test source"

    def prepare(self, channel):
        self.channel = channel

    def open(self, bq, stream_id):
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise live.DeviceError("device not found (unplugged)")
        self.streams += 1
        self._lost.clear()
        self._stop.clear()
        block = self.rate // 10

        def feed():
            for i, start in enumerate(range(0, len(self.signal) - block + 1, block)):
                if self._stop.is_set():
                    return
                if self.streams == 1 and i == self.lose_after:
                    self._lost.set()
                    return
                if not bq.put_wait(
                    live.Block(self.signal[start : start + block, None], self.rate, stream_id, time.monotonic()),
                    self._stop,
                ):
                    return

        self._thread = threading.Thread(target=feed, daemon=True)
        self._thread.start()
        return {"device": "flaky", "rate": float(self.rate), "channels": 1}

    def health(self):
        return "input stream stopped (device unplugged or failed)" if self._lost.is_set() else None

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class ConfigFailingSource(FlakySource):
    """Opens (``open_ok``: which opens succeed), else fails as a wrong configuration would."""

    def __init__(self, signal, rate, open_ok, lose_after=10):
        super().__init__(signal, rate, fail_opens=0, lose_after=lose_after)
        self.open_ok = open_ok

    def open(self, bq, stream_id):
        if not self.open_ok(self.opens + 1):
            self.opens += 1
            raise live.DeviceConfigError("no input device 'usb mic'")
        return super().open(bq, stream_id)


def test_a_configuration_error_on_the_first_open_ends_the_run(trained_model):
    clf = _classifier(str(model_path(trained_model)))
    settings = live.build(
        path=model_path(trained_model), quiet=True, backoff_initial=0.05, backoff_max=0.1, duration=5.0
    )
    source = ConfigFailingSource(scenario(16000), 16000, open_ok=lambda n: False)
    records = []
    started = time.monotonic()
    with pytest.raises(live.DeviceConfigError, match="no input device"):
        live.run(
            settings, out=io.StringIO(), classifier=clf, source=source, install_signals=False, on_record=records.append
        )
    assert time.monotonic() - started < 2.0 and source.opens == 1
    assert not events(records, "device_error") and records[-1]["type"] == "summary"

    # after a successful open the same error is a device that went away: retried with backoff
    source = ConfigFailingSource(scenario(16000), 16000, open_ok=lambda n: n != 2)
    settings = dataclasses.replace(settings, supervision=dataclasses.replace(settings.supervision, duration=2.0))
    records = []
    live.run(
        settings, out=io.StringIO(), classifier=clf, source=source, install_signals=False, on_record=records.append
    )
    sequence = [e["event"] for e in events(records) if e["event"].startswith("device")]
    assert sequence == ["device_opened", "device_lost", "device_error", "device_reopened"]


def test_device_loss_is_reported_and_reopened_with_backoff(trained_model):
    source = FlakySource(scenario(16000), 16000, fail_opens=2, lose_after=25)
    settings = live.build(
        path=model_path(trained_model), quiet=True, json_lines=True, backoff_initial=0.05, backoff_max=0.1, duration=1.5
    )
    records = []
    summary = live.run(
        settings,
        out=io.StringIO(),
        classifier=_classifier(str(model_path(trained_model))),
        source=source,
        install_signals=False,
        on_record=records.append,
    )
    sequence = [e["event"] for e in events(records) if e["event"].startswith("device")]
    assert sequence == ["device_error", "device_error", "device_opened", "device_lost", "device_reopened"]
    delays = [e["retry_in"] for e in events(records) if "retry_in" in e]
    assert delays == [0.05, 0.1, 0.1]  # doubled, then capped at backoff_max
    assert summary["device_losses"] == 1 and summary["device_errors"] == 2
    assert summary["reason"] == "duration reached"
    windows = kinds(records, "window")
    # 2.5 s of audio before the loss (4 windows), then the reopened stream starts a fresh window
    before = [w for w in windows if w["t"] <= 2.5]
    after = [w for w in windows if w["t"] > 2.5]
    assert len(before) == audio.n_windows(25 * 1600) and after
    assert after[0]["t"] == pytest.approx(2.5 + config.WINDOW_SECONDS)


def test_every_record_reaches_on_record_and_each_extra_sink(trained_model, tmp_path):
    """Record consumers (MQTT, a status page) plug in as sinks beside on_record and see the same records."""
    wav = tmp_path / "short.wav"
    sf.write(wav, scenario(16000)[: 16000 * 3], 16000, subtype="PCM_16")
    first, second, third = [], [], []
    settings = live.build(path=model_path(trained_model), wav=wav, fast=True, quiet=True)
    summary = live.run(
        settings,
        out=io.StringIO(),
        classifier=_classifier(str(model_path(trained_model))),
        install_signals=False,
        on_record=first.append,
        sinks=[second.append, third.append],
    )
    assert first == second == third and first[-1]["type"] == "summary" and first[-1]["windows"] == summary["windows"]
    assert [r["event"] for r in events(first)][:2] == ["start", "device_opened"]


def test_the_hop_changes_the_window_rate_not_the_time_behaviour(trained_model, tmp_path):
    """--hop 0.25: twice the windows, and the window counts of the decisions doubled (the start event says so)."""
    wav = tmp_path / "short.wav"
    sf.write(wav, scenario(16000)[: 16000 * 3], 16000, subtype="PCM_16")
    starts = {}
    for hop in (None, 0.25):
        records = []
        settings = live.build(
            path=model_path(trained_model), wav=wav, fast=True, quiet=True, hop=hop, alert_rule="n-of-m"
        )  # the rule whose window counts the hop changes
        live.run(
            settings,
            out=io.StringIO(),
            classifier=_classifier(str(model_path(trained_model))),
            install_signals=False,
            on_record=records.append,
        )
        starts[hop] = events(records, "start")[0]
    assert starts[None]["hop_s"] == config.HOP_SECONDS and starts[None]["hop_from"] == "model card"
    assert starts[None]["alert"] == "3 of 4" and starts[None]["state_k"] == 3
    assert starts[0.25]["alert"] == "6 of 8" and starts[0.25]["state_k"] == 6
    assert starts[0.25]["alert_after_s"] == starts[None]["alert_after_s"] == 1.5
