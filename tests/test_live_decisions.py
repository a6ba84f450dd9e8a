"""Debounced decisions (fanwatch/live/decisions.py), their settings in seconds and where the channel comes from."""

from __future__ import annotations

import pytest

from fanwatch import cli, config, live
from fanwatch.card import ModelCard
from fanwatch.errors import FanwatchError


def test_alert_debouncer_n_of_m_with_hysteresis():
    d = live.AlertDebouncer(n=3, m=4)
    seq = [0.5, 1.2, 0.9, 1.3, 1.1, 1.5, 0.2, 1.4, 0.3, 0.3, 0.3, 0.3, 1.2]
    out = [d.update(r) for r in seq]
    assert out.index("raised") == 4  # 1.2, 1.3, 1.1 over the threshold in windows 1..4
    assert out.count("raised") == 1
    assert out.index("cleared") == 11  # four quiet windows in a row (7..10 holds 1.4, so 8..11)
    assert d.active is False and out[12] is None  # one window over does not re-raise

    # a lower clear level: 0.9 x threshold counts as "still anomalous" for clearing
    d = live.AlertDebouncer(n=2, m=3, clear_n=0, clear_ratio=0.8)
    assert [d.update(r) for r in (1.1, 1.2)] == [None, "raised"]
    assert [d.update(r) for r in (0.9, 0.9, 0.9, 0.5, 0.5)] == [None, None, None, None, None]
    assert d.update(0.5) == "cleared"
    with pytest.raises(ValueError):
        live.AlertDebouncer(n=5, m=4)
    with pytest.raises(ValueError):
        live.AlertDebouncer(n=3, m=4, clear_n=3)


def test_state_debouncer_reports_each_change_once():
    d = live.StateDebouncer(k=3)
    labels = ["a", "a", "b", "a", "a", "a", "a", "b", "b", "c", "b", "b", "b", "b"]
    changes = [c for c in (d.update(x) for x in labels) if c]
    assert changes == [(None, "a"), ("a", "b")]
    assert d.state == "b"


def test_settings_are_validated():
    # alert 5 of 4 windows, clear with 3 of 3 still over, at the default hop of 0.5 s, in seconds
    for bad in (
        dict(hop=0),
        dict(alert_after=2.5, alert_window=2.0),
        dict(clear_allow=1.5),
        dict(clear_ratio=1.5),
        dict(fast=True),
        dict(queue_blocks=0),
        dict(channel="left"),
    ):
        with pytest.raises(FanwatchError):
            live.build(**bad).validate()


def test_settings_are_frozen_and_every_default_lives_once():
    settings = live.LoopSettings()
    with pytest.raises(AttributeError):
        settings.input.wav = "x.wav"
    assert settings.model.hop is None  # the model card's hop unless given
    with pytest.raises(TypeError, match="unknown loop setting"):
        live.build(alert_n=3)


def _card(**settings) -> ModelCard:
    card = {"labels": ["a"], "anomaly": {"machines": ["m"], "thresholds": {"m": 1.0}}}
    if settings:
        card["settings"] = settings
    return ModelCard.from_dict(card, "test card")


def test_channel_setting_comes_from_the_model_card_unless_given():
    card = _card(channel=1)
    assert live.resolve_channel(None, card) == (1, "model card")
    assert live.resolve_channel("mean", card) == ("mean", "command line")
    assert live.resolve_channel(cli.channel_arg("2"), card) == (2, "command line")  # parsed once, by the CLI
    assert live.resolve_channel(None, _card(channel="mean")) == ("mean", "model card")
    assert live.resolve_channel(None, _card()) == ("mean", "default")  # older cards
    with pytest.raises(FanwatchError, match="invalid channel setting"):
        live.resolve_channel(None, _card(channel="left"))
    assert live.resolve_channel(0, _card(channel="left")) == (0, "command line")  # an override still works


def test_the_default_decisions_are_three_of_four_windows_at_the_default_hop():
    counts = live.window_counts(live.DecisionSettings(), config.HOP_SECONDS)
    assert (counts.alert_n, counts.alert_m, counts.clear_n, counts.state_k) == (3, 4, 0, 3)


def test_a_shorter_hop_keeps_the_time_constants():
    """--hop 0.25 gives twice the windows: the counts double, so a decision needs as much audio as at 0.5 s.

    Each window brings one hop of new audio: the alert is raised once anomalous windows account for
    ``alert_after`` seconds of it, cleared once ``alert_window`` seconds are quiet, a state reported once
    ``state_after`` seconds agree -- the same moments of audio at either hop (to the hop they are read at)."""
    d = live.DecisionSettings()
    half = live.window_counts(d, 0.25)
    assert (half.alert_n, half.alert_m, half.clear_n, half.state_k) == (6, 8, 0, 6)
    assert live.window_counts(live.DecisionSettings(clear_allow=0.5), 0.25).clear_n == 2
    start, end = 5.0, 10.0  # a stretch of anomalous windows, in another operating state
    for hop in (0.5, 0.25):
        c = live.window_counts(d, hop)
        alerts, states = live.AlertDebouncer(c.alert_n, c.alert_m, c.clear_n), live.StateDebouncer(c.state_k)
        raised, cleared, changed = [], [], []
        for t in (hop * i for i in range(int(20 / hop))):
            inside = start <= t < end
            what = alerts.update(2.0 if inside else 0.1)
            (raised if what == "raised" else cleared if what == "cleared" else []).append(t)
            if states.update("fault" if inside else "normal"):
                changed.append(t)
        # the n-th anomalous window ends the n * hop = alert_after seconds of evidence
        assert raised == [start + d.alert_after - hop], (hop, raised)
        assert cleared == [end + d.alert_window - hop], (hop, cleared)
        assert changed == [d.state_after - hop, start + d.state_after - hop, end + d.state_after - hop], hop


def test_seconds_that_give_no_sensible_counts_end_in_one_line():
    with pytest.raises(FanwatchError, match="--clear-allow"):
        live.window_counts(live.DecisionSettings(alert_after=0.5, alert_window=1.0, clear_allow=0.4), 0.5)
