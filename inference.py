#!/usr/bin/env python3
"""Listen to a fan in real time: operating state and anomaly alerts from a microphone (or a replayed WAV)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

# numpy's OpenBLAS starts a thread per core and lets them spin after every matrix product: the anomaly
# score's two small products per window then cost ~20 % of a core at real-time pace (bench/stream: 23.7 %
# -> 4.1 % CPU). One thread is what two windows a second need; set before numpy loads. An explicit
# setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from fanwatch import cli, config, configfile, health, recording, runtime, site
from fanwatch import mqtt as mqtt_sink
from fanwatch.errors import FanwatchError
from fanwatch.live import settings as defaults
from fanwatch.live import sources
from fanwatch.live.supervisor import run

PRIVACY = (
    "Privacy: audio is analysed in memory, window by window, and then discarded; no audio is ever "
    "written to disk or sent anywhere. Only the decisions (and, with --event-log, the events) are output; "
    "the --http page shows decisions, scores, levels and counters, never audio. The one exception is "
    "--record, which writes the clips it is asked for."
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


IN, MDL, DEC, OUT, OPS, WEB = (
    defaults.InputSettings(),
    defaults.ModelSettings(),
    defaults.DecisionSettings(),
    defaults.OutputSettings(),
    defaults.SupervisionSettings(),
    defaults.HttpSettings(),
)
REC = recording.RecordSettings(out=Path("data"), label="")


def _no_password(_text: str) -> str:
    """--mqtt-password exists only to refuse it (argparse would take it for --mqtt-password-file)."""
    raise argparse.ArgumentTypeError(
        f"never on the command line (every user of the machine can read it): set "
        f"{mqtt_sink.PASSWORD_ENV} or use --mqtt-password-file"
    )


def _windows(seconds: float) -> int:
    return round(seconds / config.HOP_SECONDS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Listen to a fan or other rotating machine and report, every hop, its operating state and "
        "whether it sounds anomalous. Captures from a microphone at the device's native rate, "
        "resamples to 16 kHz, runs artifacts/sound_classifier.tflite on 0.975 s windows, debounces "
        "the decisions and prints one line (or JSON record) per window plus events (state changes, "
        "alerts raised/cleared, device lost/reopened, dropped audio). Stop with Ctrl-C or SIGTERM: "
        "a summary line follows. An unplugged microphone is reopened with backoff.",
        epilog=PRIVACY + " Settings also come from a TOML file (--config, keys = the long option names) and "
        "FANWATCH_<OPTION> environment variables; the command line wins, then the environment.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML file of settings, keys are the long option names (default ${configfile.CONFIG_ENV}; "
        "example: deploy/fanwatch.toml)",
    )
    src = p.add_argument_group("input")
    src.add_argument(
        "--device",
        metavar="NAME|INDEX",
        default=None,
        help="capture device: index or (part of the) name from --list-devices; default: the system's default input",
    )
    src.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    src.add_argument(
        "--wav",
        metavar="FILE",
        type=Path,
        default=None,
        help="replay an audio file instead of listening (WAV; FLAC/OGG too when soundfile is "
        "installed) through the same queue, resampler and worker, at real-time pace",
    )
    src.add_argument(
        "--fast",
        action="store_true",
        help="with --wav: replay as fast as the model keeps up (the file source waits on a full "
        "queue instead of dropping)",
    )
    src.add_argument(
        "--channel",
        type=cli.channel_arg,
        default=IN.channel,
        metavar="mean|N",
        help="multi-channel input: 'mean' averages all the channels, N uses channel N (0-based); "
        "default: what the model was trained with (its card's channel setting), else mean",
    )
    src.add_argument(
        "--channels",
        type=int,
        default=None,
        metavar="N",
        help="device channels to open (default with mean: every input channel the device offers, "
        f"at most {defaults.MAX_MEAN_CHANNELS}; channels that deliver pure digital silence, "
        "padding added by ALSA plugin devices, are left out of a live mean)",
    )
    src.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        metavar="HZ",
        help="device sample rate (default: the device's own default rate, e.g. 44100 or 48000; "
        "audio is resampled to 16 kHz with soxr, as in training)",
    )
    src.add_argument(
        "--block-ms",
        type=_positive_float,
        default=IN.block_seconds * 1000,
        metavar="MS",
        help=f"audio block per callback / queue item in milliseconds (default {IN.block_seconds * 1000:g})",
    )
    src.add_argument(
        "--queue-blocks",
        type=int,
        default=IN.queue_blocks,
        metavar="N",
        help=f"bounded queue between capture and model, in blocks (default {IN.queue_blocks} = "
        f"{IN.queue_blocks * IN.block_seconds:g} s at {IN.block_seconds * 1000:g} ms); "
        "blocks that do not fit are dropped and counted",
    )

    mdl = p.add_argument_group("model")
    mdl.add_argument(
        "--model",
        type=Path,
        default=MDL.path,
        metavar="PATH",
        help=f"exported model, with {runtime.CARD_NAME} beside it (default {MDL.path})",
    )
    mdl.add_argument(
        "--threads",
        type=int,
        default=MDL.threads,
        metavar="N",
        help=f"TFLite interpreter threads (default {MDL.threads})",
    )
    mdl.add_argument(
        "--runtime",
        choices=runtime.RUNTIMES,
        default=MDL.runtime,
        help="TFLite runtime (default: the first that imports, in the order listed)",
    )
    mdl.add_argument(
        "--machine",
        metavar="ID",
        default=MDL.machine,
        help="machine id whose normal reference and threshold the anomaly score uses (models trained on several "
        "machines); default: the only one; with several and none given, or an id the model does not know, the "
        "pooled normal reference of all of them",
    )
    mdl.add_argument(
        "--hop",
        type=_positive_float,
        default=MDL.hop,
        metavar="SECONDS",
        help=f"time between windows (default: the model card's, as trained: {config.HOP_SECONDS:g}); "
        f"each window is {config.WINDOW_SECONDS:g} s. The decision times below are in seconds, "
        "so another hop keeps the same behaviour in time",
    )

    mdl.add_argument(
        "--no-site",
        action="store_true",
        help=f"ignore the site calibration ({site.SITE_JSON}) beside the model; by default it is "
        "applied when there is one (and the start line says so)",
    )

    enr = p.add_argument_group("on-site enrollment")
    enr.add_argument(
        "--enroll",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="listen to SECONDS of normal running (from the microphone, or the first SECONDS of --wav "
        f"FILE; {site.MIN_SECONDS:g} s at least, in memory only), write the site calibration "
        f"beside the model ({site.SITE_JSON}, {site.SITE_NPZ}), print what changed and exit",
    )
    enr.add_argument(
        "--force",
        action="store_true",
        help="with --enroll: enroll even from audio that is silent, shorter than "
        f"{site.MIN_SECONDS:g} s (at least {site.ABSOLUTE_MIN_SECONDS:g} s) or sounds anomalous",
    )

    dec = p.add_argument_group("decisions (in seconds of audio; converted to window counts with the hop)")
    dec.add_argument(
        "--alert-rule",
        choices=defaults.ALERT_RULES,
        default=DEC.alert_rule,
        help="evidence (default): an alert when the anomaly evidence accumulated over the last seconds "
        "reaches the alert level the model card calibrated for its false alerts per day, and "
        "known-fault alerts from the head; n-of-m: the previous rule (--alert-after of "
        "--alert-window at or above the threshold, no known-fault alerts, no side channels)",
    )
    dec.add_argument(
        "--alert-level",
        type=_positive_float,
        default=DEC.alert_level,
        metavar="E",
        help="evidence rule: the evidence that raises an anomaly alert, for the score and each of its side "
        "channels (default: the model card's or the site calibration's; higher: fewer false alerts, later alerts)",
    )
    dec.add_argument(
        "--no-known-faults",
        action="store_true",
        help="no known-fault alerts from the head's fault classes (evidence rule)",
    )
    dec.add_argument(
        "--alert-window",
        type=_positive_float,
        default=DEC.alert_window,
        metavar="SECONDS",
        help="n-of-m rule: the alert looks at the windows of the last SECONDS "
        f"(default {DEC.alert_window:g}: "
        f"{_windows(DEC.alert_window)} windows at the default hop)",
    )
    dec.add_argument(
        "--alert-after",
        type=_positive_float,
        default=DEC.alert_after,
        metavar="SECONDS",
        help="raise an anomaly alert when windows covering SECONDS of the alert window reach the "
        f"threshold (default {DEC.alert_after:g}: {_windows(DEC.alert_after)} of "
        f"{_windows(DEC.alert_window)} windows)",
    )
    dec.add_argument(
        "--clear-allow",
        type=float,
        default=DEC.clear_allow,
        metavar="SECONDS",
        help="clear the alert when at most SECONDS of the alert window are above the clear level "
        f"(default {DEC.clear_allow:g}: the whole alert window quiet)",
    )
    dec.add_argument(
        "--clear-ratio",
        type=_positive_float,
        default=DEC.clear_ratio,
        metavar="R",
        help=f"clear level as a fraction of the threshold, <= 1 (default {DEC.clear_ratio:g}; e.g. 0.8 "
        "for more hysteresis)",
    )
    dec.add_argument(
        "--threshold-scale",
        type=_positive_float,
        default=DEC.threshold_scale,
        metavar="S",
        help="multiply the model's anomaly thresholds by S: above 1 fewer false alarms (noisy "
        f"room), below 1 earlier warnings (default {DEC.threshold_scale:g}); the printed anomaly "
        "score is relative to the scaled threshold",
    )
    dec.add_argument(
        "--state-after",
        type=_positive_float,
        default=DEC.state_after,
        metavar="SECONDS",
        help="report a state change after windows covering SECONDS agree "
        f"(default {DEC.state_after:g}: {_windows(DEC.state_after)} windows at the default hop)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines on stdout (one record per window, event, and the final summary) instead of readable lines",
    )
    out.add_argument("--quiet", action="store_true", help="no line per window: events and the summary only")
    out.add_argument(
        "--event-log",
        type=Path,
        default=None,
        metavar="FILE",
        help="also append events and summaries (JSON Lines) to FILE, rotated by size",
    )
    out.add_argument(
        "--event-log-bytes",
        type=int,
        default=OUT.event_log_bytes,
        metavar="BYTES",
        help=f"rotate the event log at this size (default {OUT.event_log_bytes})",
    )
    out.add_argument(
        "--event-log-backups",
        type=int,
        default=OUT.event_log_backups,
        metavar="N",
        help=f"rotated event logs to keep (default {OUT.event_log_backups})",
    )

    web = p.add_argument_group("status page and metrics")
    web.add_argument(
        "--http",
        metavar="[ADDR:]PORT",
        default=WEB.listen,
        help="serve a live status page on / (readable on a phone), /api/status (JSON), /events "
        "(server-sent events), /healthz and /metrics (Prometheus); bound to 127.0.0.1 unless "
        "ADDR is given (0.0.0.0: every interface, which needs --http-token-file). Off by default",
    )
    web.add_argument(
        "--http-token-file",
        type=Path,
        default=WEB.token_file,
        metavar="FILE",
        help="access token (one line, 16+ characters) required on every request except /healthz: "
        "Authorization: Bearer TOKEN, or open /?token=TOKEN once in a browser",
    )
    web.add_argument(
        "--http-stale-seconds",
        type=_positive_float,
        default=WEB.stale_seconds,
        metavar="SECONDS",
        help=f"/healthz fails once no audio has been analysed for this long (default {WEB.stale_seconds:g})",
    )

    rec = p.add_argument_group("recording training clips (the only time fanwatch writes audio)")
    rec.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="DIR",
        help="record WAV clips from --device (at its native rate, with the channels the loop would "
        "open) into DIR/LABEL/, the folder-per-class layout train.py reads, then exit; shows a "
        "level meter and a countdown; refuses a silent or clipping input",
    )
    rec.add_argument(
        "--label",
        default=None,
        metavar="NAME",
        help="with --record: the class of what is recorded (a folder name, e.g. on_state, fault_bearing)",
    )
    rec.add_argument(
        "--seconds",
        type=_positive_float,
        default=REC.seconds,
        metavar="S",
        help=f"with --record: how long to record in all (default {REC.seconds:g})",
    )
    rec.add_argument(
        "--clip-seconds",
        type=_positive_float,
        default=REC.clip_seconds,
        metavar="S",
        help=f"with --record: length of each clip (default {REC.clip_seconds:g})",
    )

    mq = p.add_argument_group("MQTT (Home Assistant, Grafana, a fleet's broker)")
    mq.add_argument(
        "--mqtt",
        metavar="URL",
        default=None,
        help="publish status, state and events to this broker: mqtt://host[:port] (default port 1883) "
        "or mqtts://host[:port] (TLS, 8883); the loop never waits for it",
    )
    mq.add_argument(
        "--mqtt-user",
        metavar="NAME",
        default=None,
        help=f"broker user name; the password comes from ${mqtt_sink.PASSWORD_ENV} or "
        "--mqtt-password-file, never from the command line",
    )
    mq.add_argument("--mqtt-password", type=_no_password, default=None, help=argparse.SUPPRESS)
    mq.add_argument(
        "--mqtt-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file whose first line is the broker password (e.g. a Docker secret)",
    )
    mq.add_argument(
        "--mqtt-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="CA certificate(s) that sign the broker's certificate (default: the system's)",
    )
    mq.add_argument("--mqtt-cert", type=Path, default=None, metavar="PEM", help="client certificate (with --mqtt-key)")
    mq.add_argument("--mqtt-key", type=Path, default=None, metavar="PEM", help="client certificate's private key")
    mq.add_argument(
        "--mqtt-insecure",
        action="store_true",
        help="TLS without verifying the broker's certificate (encrypted, not authenticated)",
    )
    mq.add_argument(
        "--mqtt-topic",
        default=mqtt_sink.DEFAULT_TOPIC,
        metavar="PREFIX",
        help=f"topic prefix: PREFIX/DEVICE/status|state|events (default {mqtt_sink.DEFAULT_TOPIC})",
    )
    mq.add_argument(
        "--device-name",
        default=None,
        metavar="NAME",
        help="this monitor's name; the MQTT client id, topics and Home Assistant ids derive from it "
        "(default: the host name)",
    )
    mq.add_argument(
        "--no-discovery", dest="discovery", action="store_false", help="no Home Assistant MQTT discovery configs"
    )
    mq.add_argument(
        "--discovery-prefix",
        default=mqtt_sink.DISCOVERY_PREFIX,
        metavar="PREFIX",
        help=f"Home Assistant's discovery prefix (default {mqtt_sink.DISCOVERY_PREFIX})",
    )
    mq.add_argument(
        "--mqtt-state-interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="publish the state at most this often unless it changes (default 5)",
    )
    mq.add_argument(
        "--mqtt-queue",
        type=int,
        default=1000,
        metavar="N",
        help="messages kept while the broker is unreachable (default 1000); when full, the oldest "
        "state updates go first, alerts last",
    )
    mq.add_argument(
        "--mqtt-retry-max",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="reconnect after 1, 2, 4 ... s, at most this long apart (default 30)",
    )

    ops = p.add_argument_group("operation")
    ops.add_argument(
        "--duration",
        type=_positive_float,
        default=OPS.duration,
        metavar="SECONDS",
        help="stop after this long (default: run until Ctrl-C / SIGTERM, or the end of --wav)",
    )
    ops.add_argument(
        "--backoff-max",
        type=_positive_float,
        default=OPS.backoff_max,
        metavar="SECONDS",
        help=f"lost device: retry after 1, 2, 4, ... s, at most this long apart (default {OPS.backoff_max:g})",
    )
    ops.add_argument(
        "--stall-seconds",
        type=_positive_float,
        default=OPS.stall_seconds,
        metavar="SECONDS",
        help=f"treat the device as lost when no audio arrives for this long (default {OPS.stall_seconds:g})",
    )
    ops.add_argument(
        "--heartbeat",
        type=Path,
        default=None,
        metavar="FILE",
        help="rewrite FILE with the time of the last analysed window and the current input fault (every few "
        "seconds), for `python -m fanwatch.health` (the Docker HEALTHCHECK); under systemd with WatchdogSec= "
        "the same beat pings the watchdog (also during an input fault, while audio arrives)",
    )
    ops.add_argument(
        "--simulate-slow-ms",
        type=float,
        default=OPS.simulate_slow_ms,
        metavar="MS",
        help="testing aid: sleep this long after each inference, to see drops being counted",
    )
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The command line over $FANWATCH_* over the --config file over the defaults."""
    with cli.user_errors():
        return configfile.parse_args(build_parser(), argv)


def make_sinks(args: argparse.Namespace) -> list:
    """Record sinks beside the console: the heartbeat (with --heartbeat or under a systemd watchdog) and the
    MQTT publisher (with --mqtt)."""
    sinks = []
    if args.heartbeat is not None or os.environ.get("WATCHDOG_USEC"):
        sinks.append(health.Heartbeat(args.heartbeat))
    if args.mqtt:
        settings = mqtt_sink.settings_from(
            args.mqtt,
            user=args.mqtt_user,
            password_file=args.mqtt_password_file,
            ca=args.mqtt_ca,
            cert=args.mqtt_cert,
            key=args.mqtt_key,
            insecure=args.mqtt_insecure,
            topic=args.mqtt_topic,
            device_name=args.device_name,
            discovery=args.discovery,
            discovery_prefix=args.discovery_prefix,
            state_interval=args.mqtt_state_interval,
            queue_max=args.mqtt_queue,
            retry_max=args.mqtt_retry_max,
        )
        sinks.append(mqtt_sink.MqttPublisher(settings))
    return sinks


def settings_from(args: argparse.Namespace) -> defaults.LoopSettings:
    return defaults.LoopSettings(
        input=defaults.InputSettings(
            device=args.device,
            wav=args.wav,
            fast=args.fast,
            channel=args.channel,
            channels=args.channels,
            rate=args.rate,
            block_seconds=args.block_ms / 1000.0,
            queue_blocks=args.queue_blocks,
        ),
        model=defaults.ModelSettings(
            path=args.model,
            threads=args.threads,
            runtime=args.runtime,
            machine=args.machine,
            hop=args.hop,
            site=not args.no_site,
        ),
        decisions=defaults.DecisionSettings(
            alert_window=args.alert_window,
            alert_after=args.alert_after,
            clear_allow=args.clear_allow,
            clear_ratio=args.clear_ratio,
            threshold_scale=args.threshold_scale,
            state_after=args.state_after,
            alert_rule=args.alert_rule,
            alert_level=args.alert_level,
            known_faults=not args.no_known_faults,
        ),
        output=defaults.OutputSettings(
            json_lines=args.json,
            quiet=args.quiet,
            event_log=args.event_log,
            event_log_bytes=args.event_log_bytes,
            event_log_backups=args.event_log_backups,
        ),
        supervision=dataclasses.replace(
            OPS,
            backoff_max=max(args.backoff_max, OPS.backoff_initial),
            stall_seconds=args.stall_seconds,
            duration=args.duration,
            simulate_slow_ms=args.simulate_slow_ms,
        ),
        http=defaults.HttpSettings(
            listen=args.http, token_file=args.http_token_file, stale_seconds=args.http_stale_seconds
        ),
    )


def record_settings_from(args: argparse.Namespace) -> recording.RecordSettings:
    if args.label is None:
        raise FanwatchError("--record needs --label NAME (the class folder the clips go into, e.g. on_state)")
    if args.wav is not None:
        raise FanwatchError("--record captures from a device; it cannot be combined with --wav")
    return recording.RecordSettings(
        out=args.record,
        label=args.label,
        seconds=args.seconds,
        clip_seconds=args.clip_seconds,
        device=args.device,
        rate=args.rate,
        channels=args.channels,
        block_seconds=args.block_ms / 1000.0,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    status = 0
    try:
        with cli.user_errors():  # FanwatchError -> "error: ..." and status 2; Ctrl-C -> 130
            if args.list_devices:
                sources.list_devices()
            elif args.enroll is not None:
                from fanwatch.live import enroll

                enroll.enroll(settings_from(args), args.enroll, force=args.force)
            elif args.record is not None:
                recording.record(record_settings_from(args))
            else:
                if args.force:
                    raise FanwatchError("--force only applies to --enroll")
                settings = settings_from(args)
                settings.validate()  # a bad option: one line before anything connects
                sinks = make_sinks(args)
                try:
                    run(settings, sinks=sinks)
                finally:
                    for sink in reversed(sinks):
                        sink.close()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    if sources.STUCK_STREAMS:  # a hung capture driver would also hang PortAudio's exit handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
