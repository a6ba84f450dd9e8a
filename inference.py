#!/usr/bin/env python3
"""Listen to a fan in real time: operating state and anomaly alerts from a microphone (or a replayed WAV)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from fanwatch import cli, config, runtime
from fanwatch.live import settings as defaults
from fanwatch.live import sources
from fanwatch.live.supervisor import run

PRIVACY = ("Privacy: audio is analysed in memory, window by window, and then discarded; no audio is ever "
           "written to disk or sent anywhere. Only the decisions (and, with --event-log, the events) are output.")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


IN, MDL, DEC, OUT, OPS = (defaults.InputSettings(), defaults.ModelSettings(), defaults.DecisionSettings(),
                 defaults.OutputSettings(), defaults.SupervisionSettings())


def _windows(seconds: float) -> int:
    return round(seconds / config.HOP_SECONDS)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Listen to a fan or other rotating machine and report, every hop, its operating state and "
                    "whether it sounds anomalous. Captures from a microphone at the device's native rate, "
                    "resamples to 16 kHz, runs artifacts/sound_classifier.tflite on 0.975 s windows, debounces "
                    "the decisions and prints one line (or JSON record) per window plus events (state changes, "
                    "alerts raised/cleared, device lost/reopened, dropped audio). Stop with Ctrl-C or SIGTERM: "
                    "a summary line follows. An unplugged microphone is reopened with backoff.",
        epilog=PRIVACY)
    src = p.add_argument_group("input")
    src.add_argument("--device", metavar="NAME|INDEX", default=None,
                     help="capture device: index or (part of the) name from --list-devices; default: the system's "
                          "default input")
    src.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    src.add_argument("--wav", metavar="FILE", type=Path, default=None,
                     help="replay an audio file instead of listening (WAV; FLAC/OGG too when soundfile is "
                          "installed) through the same queue, resampler and worker, at real-time pace")
    src.add_argument("--fast", action="store_true",
                     help="with --wav: replay as fast as the model keeps up (the file source waits on a full "
                          "queue instead of dropping)")
    src.add_argument("--channel", type=cli.channel_arg, default=IN.channel, metavar="mean|N",
                     help="multi-channel input: 'mean' averages all the channels, N uses channel N (0-based); "
                          "default: what the model was trained with (its card's channel setting), else mean")
    src.add_argument("--channels", type=int, default=None, metavar="N",
                     help="device channels to open (default with mean: every input channel the device offers, "
                          f"at most {defaults.MAX_MEAN_CHANNELS}; channels that deliver pure digital silence, "
                          "padding added by ALSA plugin devices, are left out of a live mean)")
    src.add_argument("--rate", type=_positive_float, default=None, metavar="HZ",
                     help="device sample rate (default: the device's own default rate, e.g. 44100 or 48000; "
                          "audio is resampled to 16 kHz with soxr, as in training)")
    src.add_argument("--block-ms", type=_positive_float, default=IN.block_seconds * 1000, metavar="MS",
                     help="audio block per callback / queue item in milliseconds "
                          f"(default {IN.block_seconds * 1000:g})")
    src.add_argument("--queue-blocks", type=int, default=IN.queue_blocks, metavar="N",
                     help=f"bounded queue between capture and model, in blocks (default {IN.queue_blocks} = "
                          f"{IN.queue_blocks * IN.block_seconds:g} s at {IN.block_seconds * 1000:g} ms); "
                          "blocks that do not fit are dropped and counted")

    mdl = p.add_argument_group("model")
    mdl.add_argument("--model", type=Path, default=MDL.path, metavar="PATH",
                     help=f"exported model, with {runtime.CARD_NAME} beside it (default {MDL.path})")
    mdl.add_argument("--threads", type=int, default=MDL.threads, metavar="N",
                     help=f"TFLite interpreter threads (default {MDL.threads})")
    mdl.add_argument("--runtime", choices=runtime.RUNTIMES, default=MDL.runtime,
                     help="TFLite runtime (default: the first that imports, in the order listed)")
    mdl.add_argument("--machine", metavar="ID", default=MDL.machine,
                     help="machine id whose anomaly threshold applies (models trained on several machines; "
                          "default: the only one, or the closest)")
    mdl.add_argument("--hop", type=_positive_float, default=MDL.hop, metavar="SECONDS",
                     help=f"time between windows (default: the model card's, as trained: {config.HOP_SECONDS:g}); "
                          f"each window is {config.WINDOW_SECONDS:g} s. The decision times below are in seconds, "
                          "so another hop keeps the same behaviour in time")

    dec = p.add_argument_group("decisions (in seconds of audio; converted to window counts with the hop)")
    dec.add_argument("--alert-window", type=_positive_float, default=DEC.alert_window, metavar="SECONDS",
                     help=f"the alert looks at the windows of the last SECONDS (default {DEC.alert_window:g}: "
                          f"{_windows(DEC.alert_window)} windows at the default hop)")
    dec.add_argument("--alert-after", type=_positive_float, default=DEC.alert_after, metavar="SECONDS",
                     help="raise an anomaly alert when windows covering SECONDS of the alert window reach the "
                          f"threshold (default {DEC.alert_after:g}: {_windows(DEC.alert_after)} of "
                          f"{_windows(DEC.alert_window)} windows)")
    dec.add_argument("--clear-allow", type=float, default=DEC.clear_allow, metavar="SECONDS",
                     help="clear the alert when at most SECONDS of the alert window are above the clear level "
                          f"(default {DEC.clear_allow:g}: the whole alert window quiet)")
    dec.add_argument("--clear-ratio", type=_positive_float, default=DEC.clear_ratio, metavar="R",
                     help=f"clear level as a fraction of the threshold, <= 1 (default {DEC.clear_ratio:g}; e.g. 0.8 "
                          "for more hysteresis)")
    dec.add_argument("--threshold-scale", type=_positive_float, default=DEC.threshold_scale, metavar="S",
                     help="multiply the model's anomaly thresholds by S: above 1 fewer false alarms (noisy "
                          f"room), below 1 earlier warnings (default {DEC.threshold_scale:g}); the printed anomaly "
                          "score is relative to the scaled threshold")
    dec.add_argument("--state-after", type=_positive_float, default=DEC.state_after, metavar="SECONDS",
                     help="report a state change after windows covering SECONDS agree "
                          f"(default {DEC.state_after:g}: {_windows(DEC.state_after)} windows at the default hop)")

    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="JSON Lines on stdout (one record per window, event, "
                                                         "and the final summary) instead of readable lines")
    out.add_argument("--quiet", action="store_true", help="no line per window: events and the summary only")
    out.add_argument("--event-log", type=Path, default=None, metavar="FILE",
                     help="also append events and summaries (JSON Lines) to FILE, rotated by size")
    out.add_argument("--event-log-bytes", type=int, default=OUT.event_log_bytes, metavar="BYTES",
                     help=f"rotate the event log at this size (default {OUT.event_log_bytes})")
    out.add_argument("--event-log-backups", type=int, default=OUT.event_log_backups, metavar="N",
                     help=f"rotated event logs to keep (default {OUT.event_log_backups})")

    ops = p.add_argument_group("operation")
    ops.add_argument("--duration", type=_positive_float, default=OPS.duration, metavar="SECONDS",
                     help="stop after this long (default: run until Ctrl-C / SIGTERM, or the end of --wav)")
    ops.add_argument("--backoff-max", type=_positive_float, default=OPS.backoff_max, metavar="SECONDS",
                     help="lost device: retry after 1, 2, 4, ... s, at most this long apart "
                          f"(default {OPS.backoff_max:g})")
    ops.add_argument("--stall-seconds", type=_positive_float, default=OPS.stall_seconds, metavar="SECONDS",
                     help="treat the device as lost when no audio arrives for this long "
                          f"(default {OPS.stall_seconds:g})")
    ops.add_argument("--simulate-slow-ms", type=float, default=OPS.simulate_slow_ms, metavar="MS",
                     help="testing aid: sleep this long after each inference, to see drops being counted")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> defaults.LoopSettings:
    return defaults.LoopSettings(
        input=defaults.InputSettings(device=args.device, wav=args.wav, fast=args.fast, channel=args.channel,
                                     channels=args.channels, rate=args.rate, block_seconds=args.block_ms / 1000.0,
                                     queue_blocks=args.queue_blocks),
        model=defaults.ModelSettings(path=args.model, threads=args.threads, runtime=args.runtime,
                                     machine=args.machine, hop=args.hop),
        decisions=defaults.DecisionSettings(alert_window=args.alert_window, alert_after=args.alert_after,
                                            clear_allow=args.clear_allow, clear_ratio=args.clear_ratio,
                                            threshold_scale=args.threshold_scale, state_after=args.state_after),
        output=defaults.OutputSettings(json_lines=args.json, quiet=args.quiet, event_log=args.event_log,
                                       event_log_bytes=args.event_log_bytes,
                                       event_log_backups=args.event_log_backups),
        supervision=dataclasses.replace(OPS, backoff_max=max(args.backoff_max, OPS.backoff_initial),
                                        stall_seconds=args.stall_seconds, duration=args.duration,
                                        simulate_slow_ms=args.simulate_slow_ms),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    status = 0
    try:
        with cli.user_errors():  # FanwatchError -> "error: ..." and status 2; Ctrl-C -> 130
            if args.list_devices:
                sources.list_devices()
            else:
                run(settings_from(args))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    if sources.STUCK_STREAMS:  # a hung capture driver would also hang PortAudio's exit handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
