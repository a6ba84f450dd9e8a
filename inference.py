#!/usr/bin/env python3
"""Listen to a fan in real time: operating state and anomaly alerts from a microphone (or a replayed WAV)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # only matters when the TensorFlow runtime is the fallback

from fanwatch import audio, cli, config, runtime, stream  # noqa: E402
from fanwatch.errors import FanwatchError  # noqa: E402

PRIVACY = ("Privacy: audio is analysed in memory, window by window, and then discarded; no audio is ever "
           "written to disk or sent anywhere. Only the decisions (and, with --event-log, the events) are output; "
           "the --http page shows decisions, scores, levels and counters, never audio. The one exception is "
           "--record, which writes the clips it is asked for.")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _channel(text: str) -> str | int:
    try:
        return audio.parse_channel(text)
    except FanwatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    src.add_argument("--channel", type=_channel, default=None, metavar="mean|N",
                     help="multi-channel input: 'mean' averages all the channels, N uses channel N (0-based); "
                          "default: what the model was trained with (its card's channel setting), else mean")
    src.add_argument("--channels", type=int, default=None, metavar="N",
                     help="device channels to open (default with mean: every input channel the device offers, "
                          f"at most {stream.MAX_MEAN_CHANNELS}; channels that deliver pure digital silence, "
                          "padding added by ALSA plugin devices, are left out of a live mean)")
    src.add_argument("--rate", type=_positive_float, default=None, metavar="HZ",
                     help="device sample rate (default: the device's own default rate, e.g. 44100 or 48000; "
                          "audio is resampled to 16 kHz with soxr, as in training)")
    src.add_argument("--block-ms", type=_positive_float, default=stream.DEFAULT_BLOCK_SECONDS * 1000, metavar="MS",
                     help="audio block per callback / queue item in milliseconds (default 100)")
    src.add_argument("--queue-blocks", type=int, default=stream.DEFAULT_QUEUE_BLOCKS, metavar="N",
                     help="bounded queue between capture and model, in blocks (default 50 = 5 s at 100 ms); "
                          "blocks that do not fit are dropped and counted")

    mdl = p.add_argument_group("model")
    mdl.add_argument("--model", type=Path, default=stream.DEFAULT_MODEL, metavar="PATH",
                     help=f"exported model, with {runtime.CARD_NAME} beside it "
                          f"(default {stream.DEFAULT_MODEL})")
    mdl.add_argument("--threads", type=int, default=1, metavar="N", help="TFLite interpreter threads (default 1)")
    mdl.add_argument("--runtime", choices=runtime.RUNTIMES, default=None,
                     help="TFLite runtime (default: the first that imports, in the order listed)")
    mdl.add_argument("--machine", metavar="ID", default=None,
                     help="machine id whose anomaly threshold applies (models trained on several machines; "
                          "default: the only one, or the closest)")
    mdl.add_argument("--hop", type=_positive_float, default=config.HOP_SECONDS, metavar="SECONDS",
                     help=f"time between windows (default {config.HOP_SECONDS:g}); each window is "
                          f"{config.WINDOW_SECONDS:g} s")

    dec = p.add_argument_group("decisions")
    dec.add_argument("--alert-n", type=int, default=3, metavar="N",
                     help="raise an anomaly alert when N of the last M windows exceed the threshold (default 3)")
    dec.add_argument("--alert-m", type=int, default=4, metavar="M", help="see --alert-n (default 4)")
    dec.add_argument("--clear-n", type=int, default=0, metavar="C",
                     help="clear the alert when at most C of the last M windows are above the clear level "
                          "(default 0: M quiet windows in a row)")
    dec.add_argument("--clear-ratio", type=_positive_float, default=1.0, metavar="R",
                     help="clear level as a fraction of the threshold, <= 1 (default 1.0; e.g. 0.8 for more "
                          "hysteresis)")
    dec.add_argument("--threshold-scale", type=_positive_float, default=1.0, metavar="S",
                     help="multiply the model's anomaly thresholds by S: above 1 fewer false alarms (noisy "
                          "room), below 1 earlier warnings (default 1); the printed anomaly score is relative "
                          "to the scaled threshold")
    dec.add_argument("--state-k", type=int, default=3, metavar="K",
                     help="report a state change after K consecutive windows agree (default 3)")

    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="JSON Lines on stdout (one record per window, event, "
                                                         "and the final summary) instead of readable lines")
    out.add_argument("--quiet", action="store_true", help="no line per window: events and the summary only")
    out.add_argument("--event-log", type=Path, default=None, metavar="FILE",
                     help="also append events and summaries (JSON Lines) to FILE, rotated by size")
    out.add_argument("--event-log-bytes", type=int, default=1_000_000, metavar="BYTES",
                     help="rotate the event log at this size (default 1000000)")
    out.add_argument("--event-log-backups", type=int, default=5, metavar="N",
                     help="rotated event logs to keep (default 5)")

    rec = p.add_argument_group("recording training clips (the only time fanwatch writes audio)")
    rec.add_argument("--record", type=Path, default=None, metavar="DIR",
                     help="record WAV clips from --device (at its native rate, with the channels the loop would "
                          "open) into DIR/LABEL/, the folder-per-class layout train.py reads, then exit; shows a "
                          "level meter and a countdown; refuses a silent or clipping input")
    rec.add_argument("--label", default=None, metavar="NAME",
                     help="with --record: the class of what is recorded (a folder name, e.g. on_state, "
                          "fault_bearing)")
    rec.add_argument("--seconds", type=_positive_float, default=60.0, metavar="S",
                     help="with --record: how long to record in all (default 60)")
    rec.add_argument("--clip-seconds", type=_positive_float, default=10.0, metavar="S",
                     help="with --record: length of each clip (default 10)")

    web = p.add_argument_group("status page and metrics")
    web.add_argument("--http", metavar="[ADDR:]PORT", default=None,
                     help="serve a live status page on / (readable on a phone), /api/status (JSON), /events "
                          "(server-sent events), /healthz and /metrics (Prometheus); bound to 127.0.0.1 unless "
                          "ADDR is given (0.0.0.0: every interface, which needs --http-token-file). Off by default")
    web.add_argument("--http-token-file", type=Path, default=None, metavar="FILE",
                     help="access token (one line, 16+ characters) required on every request except /healthz: "
                          "Authorization: Bearer TOKEN, or open /?token=TOKEN once in a browser")
    web.add_argument("--http-stale-seconds", type=_positive_float, default=15.0, metavar="SECONDS",
                     help="/healthz fails once no audio has been analysed for this long (default 15)")

    ops = p.add_argument_group("operation")
    ops.add_argument("--duration", type=_positive_float, default=None, metavar="SECONDS",
                     help="stop after this long (default: run until Ctrl-C / SIGTERM, or the end of --wav)")
    ops.add_argument("--backoff-max", type=_positive_float, default=30.0, metavar="SECONDS",
                     help="lost device: retry after 1, 2, 4, ... s, at most this long apart (default 30)")
    ops.add_argument("--stall-seconds", type=_positive_float, default=5.0, metavar="SECONDS",
                     help="treat the device as lost when no audio arrives for this long (default 5)")
    ops.add_argument("--simulate-slow-ms", type=float, default=0.0, metavar="MS",
                     help="testing aid: sleep this long after each inference, to see drops being counted")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> stream.LoopSettings:
    return stream.LoopSettings(
        model=args.model, device=args.device, wav=args.wav, fast=args.fast, hop=args.hop, threads=args.threads,
        runtime=args.runtime, machine=args.machine, channel=args.channel, channels=args.channels, rate=args.rate,
        block_seconds=args.block_ms / 1000.0, queue_blocks=args.queue_blocks, alert_n=args.alert_n,
        alert_m=args.alert_m, clear_n=args.clear_n, clear_ratio=args.clear_ratio,
        threshold_scale=args.threshold_scale, state_k=args.state_k,
        json_lines=args.json, quiet=args.quiet, event_log=args.event_log, event_log_bytes=args.event_log_bytes,
        event_log_backups=args.event_log_backups, backoff_max=max(args.backoff_max, 1.0),
        stall_seconds=args.stall_seconds, duration=args.duration, simulate_slow_ms=args.simulate_slow_ms,
    )


def _record(args: argparse.Namespace) -> None:
    from fanwatch import recording

    if args.label is None:
        raise FanwatchError("--record needs --label NAME (the class folder the clips go into, e.g. on_state)")
    if args.wav is not None:
        raise FanwatchError("--record captures from a device; it cannot be combined with --wav")
    recording.record(recording.RecordSettings(
        out=args.record, label=args.label, seconds=args.seconds, clip_seconds=args.clip_seconds,
        device=args.device, rate=args.rate, channels=args.channels, block_seconds=args.block_ms / 1000.0))


def _run_with_server(args: argparse.Namespace) -> None:
    from fanwatch import status, webserver

    host, port = webserver.parse_bind(args.http)
    token = webserver.read_token(args.http_token_file) if args.http_token_file is not None else None
    settings = settings_from(args)
    settings.validate()  # before the server binds: a bad option still ends in one line and nothing listening
    board = status.StatusBoard(settings.hop, args.http_stale_seconds)
    with webserver.StatusServer(board, host, port, token) as server:
        note = webserver.token_file_warning(args.http_token_file) if token else None
        print(f"status page: {server.url}" + (" (token required)" if token else "") + (f"; {note}" if note else ""),
              file=sys.stderr, flush=True)
        stream.run(settings, on_record=board)


def main(argv=None) -> int:
    args = parse_args(argv)
    status = 0
    try:
        with cli.user_errors():  # FanwatchError -> "error: ..." and status 2; Ctrl-C -> 130
            if args.list_devices:
                stream.list_devices()
            elif args.record is not None:
                _record(args)
            elif args.http is not None:
                _run_with_server(args)
            else:
                stream.run(settings_from(args))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    if stream.STUCK_STREAMS:  # a hung capture driver would also hang PortAudio's exit handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
