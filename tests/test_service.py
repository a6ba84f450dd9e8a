"""Running as a service: the TOML/environment settings (fanwatch/configfile.py), the heartbeat and its check
(fanwatch/health.py), docker-compose.yml, the systemd unit and the image's HEALTHCHECK."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import inference
from fanwatch import configfile, health
from fanwatch.errors import FanwatchError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "fanwatch.toml"
UNIT = REPO / "deploy" / "fanwatch.service"


def parse(argv, environ=None, config_text=None, tmp_path=None):
    environ = dict(environ or {})
    if config_text is not None:
        path = tmp_path / "fanwatch.toml"
        path.write_text(config_text)
        environ.setdefault(configfile.CONFIG_ENV, str(path))
    return configfile.parse_args(inference.build_parser(), argv, environ)


# --------------------------------------------------------------------------------------------------
# settings: command line over environment over file


def test_command_line_wins_over_environment_over_file(tmp_path):
    text = (
        'mqtt = "mqtt://from-file"\nmqtt-user = "file-user"\nalert-after = 1.0\nquiet = true\nhop = 0.25\n'
        'mqtt_topic = "plant"\nno-discovery = true\n'
    )
    args = parse([], {}, text, tmp_path)
    assert (args.mqtt, args.mqtt_user, args.alert_after, args.quiet, args.hop, args.mqtt_topic, args.discovery) == (
        "mqtt://from-file",
        "file-user",
        1.0,
        True,
        0.25,
        "plant",
        False,
    )
    env = {"FANWATCH_MQTT_USER": "env-user", "FANWATCH_ALERT_AFTER": "0.5", "FANWATCH_JSON": "yes"}
    args = parse([], env, text, tmp_path)
    assert (args.mqtt, args.mqtt_user, args.alert_after, args.json) == ("mqtt://from-file", "env-user", 0.5, True)
    args = parse(
        ["--mqtt-user", "cli-user", "--alert-after", "1.5", "--config", str(tmp_path / "fanwatch.toml")],
        env,
        text,
        tmp_path,
    )
    assert (args.mqtt_user, args.alert_after) == ("cli-user", 1.5)
    # nothing set anywhere: the built-in defaults
    args = parse([], {})
    assert (args.mqtt, args.alert_after, args.quiet, args.discovery, args.config) == (None, 1.5, False, True, None)


def test_bad_settings_are_one_line_naming_where_they_came_from(tmp_path):
    cases = [
        ('event-log-backups = "three"\n', {}, "config file .*fanwatch.toml: event-log-backups: invalid int value"),
        ("hop = -1\n", {}, "config file .*hop: must be positive"),
        ('mqtt-usr = "pi"\n', {}, "unknown key 'mqtt-usr'"),
        ('mqtt-password = "x"\n', {}, "no passwords in the config file"),
        ('quiet = "maybe"\n', {}, "quiet is a flag"),
        ('runtime = "cuda"\n', {}, "runtime must be one of"),
        ("mqtt = [1, 2]\n", {}, "takes one value"),
        ("model = \n", {}, "not valid TOML"),
        ("", {"FANWATCH_QUEUE_BLOCKS": "x"}, "environment FANWATCH_QUEUE_BLOCKS: queue-blocks: invalid int value"),
        ("", {"FANWATCH_QUIET": "perhaps"}, "environment FANWATCH_QUIET: quiet is a flag"),
    ]
    for text, env, message in cases:
        with pytest.raises(FanwatchError, match=message):
            configfile.defaults(inference.build_parser(), _write(tmp_path, text), env)
    with pytest.raises(FanwatchError, match="no such file"):
        configfile.defaults(inference.build_parser(), tmp_path / "missing.toml", {})
    # through the real command line: status 2 and one line, no traceback
    bad = _write(tmp_path, 'event-log-backups = "three"\n')
    proc = subprocess.run(
        [sys.executable, "inference.py", "--config", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "event-log-backups" in proc.stderr


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fanwatch.toml"
    path.write_text(text)
    return path


def test_the_example_config_file_is_valid_and_documents_the_mqtt_options():
    values = configfile.defaults(inference.build_parser(), EXAMPLE, {})
    assert values["quiet"] is True and values["mqtt_topic"] == "fanwatch"
    text = EXAMPLE.read_text()
    for option in (
        "mqtt",
        "mqtt-user",
        "mqtt-password-file",
        "mqtt-ca",
        "device-name",
        "no-discovery",
        "device",
        "model",
    ):
        assert f"{option} =" in text, option
    # every key in it, commented out or not, is a real option
    known = set(configfile._settings(inference.build_parser()))
    for line in text.splitlines():
        stripped = line.lstrip("# ").split("#")[0]
        if " = " in stripped and not stripped.startswith(" "):
            key = stripped.split(" = ")[0].strip()
            if key.replace("-", "").isalnum():
                assert key in known, f"{key} in {EXAMPLE.name} is not an option"


def test_a_config_file_drives_a_real_run(trained_model, tmp_path):
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "quiet.wav"
    # faint noise (-60 dBFS): digital zero would be an input fault, and the file would give no window
    sf.write(wav, np.random.default_rng(0).normal(0, 1e-3, 16000 * 2).astype(np.float32), 16000)
    config = _write(
        tmp_path,
        f'model = "{trained_model / "sound_classifier.tflite"}"\nwav = "{wav}"\nfast = true\n'
        f'json = true\nhop = 0.25\nheartbeat = "{tmp_path / "hb"}"\n',
    )
    env = dict(os.environ, FANWATCH_CONFIG=str(config), FANWATCH_STATE_AFTER="1.0")
    proc = subprocess.run(
        [sys.executable, "inference.py", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    start = next(r for r in records if r.get("event") == "start")
    assert start["settings"]["hop"] == 0.25 and start["settings"]["state_after"] == 1.0  # file and environment
    assert start["settings"]["quiet"] is True and not [r for r in records if r["type"] == "window"]  # CLI
    assert health.check(tmp_path / "hb", 60)[0]


# --------------------------------------------------------------------------------------------------
# heartbeat and health check


def test_health_check_tells_fresh_stale_and_missing(tmp_path):
    path = tmp_path / "hb"
    beat = health.Heartbeat(path, every=0.0)
    assert health.check(path, 60) == (False, f"unhealthy: no audio analysed yet ({path} does not exist)")
    beat({"type": "event", "event": "device_lost"})
    assert not path.exists()  # only analysed windows count
    beat({"type": "window", "time": "x"})
    ok, line = health.check(path, 60)
    assert ok and line.startswith("healthy: last window")
    ok, line = health.check(path, 60, now=time.time() + 300)
    assert not ok and "no audio analysed for 300 s" in line
    # a file left by an earlier run does not count for this one
    health.Heartbeat(path)
    assert not path.exists()
    env = dict(os.environ, FANWATCH_HEARTBEAT=str(path))
    check = [sys.executable, "-m", "fanwatch.health", "--max-age", "60"]
    assert subprocess.run(check, cwd=REPO, env=env, capture_output=True, timeout=30).returncode == 1
    health.Heartbeat(path, every=0.0)({"type": "window"})
    proc = subprocess.run(check, cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("healthy"), proc.stdout
    os.utime(path)
    path.write_text(json.dumps({"last_window": time.time() - 120}))
    proc = subprocess.run(check, cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "no audio analysed for 120 s" in proc.stdout


def test_heartbeat_pings_the_systemd_watchdog(tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        beat = health.Heartbeat(None, every=0.0, environ={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "120000000"})
        beat({"type": "event", "event": "start"})
        beat({"type": "window"})
        assert server.recv(100) == b"WATCHDOG=1"


SILENCE = "digital silence (every sample is 0)"


def _pings(server: socket.socket, timeout: float = 0.3) -> list[bytes]:
    """Every datagram waiting on the fake NOTIFY_SOCKET (the last one within ``timeout``)."""
    got = []
    server.settimeout(timeout)
    try:
        while True:
            got.append(server.recv(100))
    except TimeoutError:
        return got


def test_an_input_fault_keeps_the_watchdog_fed_and_makes_the_check_say_why(tmp_path):
    """During an input fault no window comes, but the loop is alive (``alive()`` after each block): the
    watchdog keeps being pinged (a restart would not mend a muted microphone) while the check fails with the
    fault's reason. Without blocks (a dead device, a stuck loop) nothing beats, and the check fails as ever."""
    path, address = tmp_path / "hb", str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        beat = health.Heartbeat(path, every=0.0, environ={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "120000000"})
        beat({"type": "window", "time": "w1"})
        beat.alive()  # outside a fault the windows beat, not the blocks
        assert _pings(server) == [b"WATCHDOG=1"]
        assert health.check(path, 60)[0]
        since = "2026-01-01T00:00:00.000Z"
        beat({"type": "event", "event": "input_fault", "t": 3.0, "reason": SILENCE, "time": since})
        for _ in range(3):
            beat.alive()
        assert _pings(server) == [b"WATCHDOG=1"] * 4  # the fault (at once), then every processed block
        ok, line = health.check(path, 60)
        assert not ok and line.startswith(f"unhealthy: input fault since {since}: {SILENCE}"), line
        data = json.loads(path.read_text())
        assert data["input_fault"] == SILENCE and data["input_fault_since"] == since and data["time"] == "w1"
        assert data["last_beat"] >= data["last_window"]
        env = dict(os.environ, FANWATCH_HEARTBEAT=str(path))
        proc = subprocess.run(
            [sys.executable, "-m", "fanwatch.health"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 1 and proc.stdout.startswith(f"unhealthy: input fault since {since}: {SILENCE}")
        # no block any more during the fault (the device died, the loop hangs): no beat, the file ages
        ok, line = health.check(path, 60, now=time.time() + 300)
        assert not ok and "no audio analysed for 300 s" in line and "input fault" not in line
        beat({"type": "event", "event": "input_ok", "t": 9.0, "time": "x"})
        assert health.check(path, 60)[0] and not json.loads(path.read_text())["input_fault"]
        beat.alive()
        assert _pings(server) == [b"WATCHDOG=1"]  # input_ok itself; alive() is quiet again
    # the rate limit holds during a fault too: at most every ``every`` seconds
    slow = health.Heartbeat(tmp_path / "slow", every=60.0)
    slow({"type": "event", "event": "input_fault", "t": 0.0, "reason": SILENCE, "time": since})
    before = (tmp_path / "slow").stat().st_mtime_ns
    time.sleep(0.02)
    slow.alive()
    assert (tmp_path / "slow").stat().st_mtime_ns == before


def test_a_muted_microphone_is_not_restarted_but_reported_and_a_hung_one_still_fails(trained_model, tmp_path):
    """The real loop on the virtual ALSA microphone: sound, then the digital zeros of a muted microphone
    (an input fault for as long as it lasts), then a hung device (no blocks at all)."""
    import numpy as np
    from alsa_virtual import VirtualMic
    from live_common import portaudio_available

    from fanwatch import synth

    if not portaudio_available():
        pytest.skip("needs sounddevice and libportaudio2")
    rate, heartbeat, address = 48000, tmp_path / "hb", str(tmp_path / "notify")
    sound = synth.render("high_speed", 2.5, 11, sample_rate=rate).astype(np.float32)
    pings: list[float] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server, VirtualMic(tmp_path / "mic", sound, rate) as mic:
        server.bind(address)
        server.settimeout(0.2)
        stop = threading.Event()

        def listen():
            while not stop.is_set():
                try:
                    if server.recv(100) == b"WATCHDOG=1":
                        pings.append(time.monotonic())
                except TimeoutError:
                    pass

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        env = dict(mic.env, NOTIFY_SOCKET=address, WATCHDOG_USEC="120000000")
        model = trained_model / "sound_classifier.tflite"
        cmd = [sys.executable, "inference.py", "--model", str(model), "--device", mic.device, "--json", "--quiet"]
        proc = subprocess.Popen(
            [*cmd, "--heartbeat", str(heartbeat), "--stall-seconds", "60"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert mic.played.wait(timeout=60), "the device never played its signal"
            deadline = time.monotonic() + 20
            while "input fault" not in health.check(heartbeat, 60)[1] and time.monotonic() < deadline:
                time.sleep(0.2)
            fault_seen = time.monotonic()
            time.sleep(11.0)  # the muted microphone: more than two heartbeat periods (5 s) of zeros
            check = [sys.executable, "-m", "fanwatch.health", "--heartbeat", str(heartbeat)]
            during = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=30)
            mic.hold.set()  # now the device hangs: no block at all
            held = time.monotonic()
            time.sleep(8.0)
            after_hold = health.check(heartbeat, 6.0)
            mic.hold.clear()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        listener.join(timeout=2)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    faults = [r for r in records if r.get("event") == "input_fault"]
    assert faults and SILENCE in [f["reason"] for f in faults], faults
    # the watchdog went on through the fault, every ~5 s, and stopped when the device hung
    in_fault = [p for p in pings if fault_seen <= p <= held]
    assert len(in_fault) >= 2, (pings, fault_seen, held)
    assert not [p for p in pings if held + 1.0 < p < held + 8.0], (pings, held)
    assert during.returncode == 1 and "unhealthy: input fault since " in during.stdout, during.stdout
    assert SILENCE in during.stdout
    assert not after_hold[0] and "no audio analysed for" in after_hold[1], after_hold


# --------------------------------------------------------------------------------------------------
# docker-compose.yml, the systemd unit, the Dockerfile


def test_compose_file_runs_fanwatch_as_a_service():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    app = compose["services"]["fanwatch"]
    assert app["restart"] == "unless-stopped"
    assert "/dev/snd:/dev/snd" in app["devices"]
    mounts = {m.split(":")[1]: m for m in app["volumes"]}
    assert mounts["/app/artifacts"].endswith(":ro")  # the model, read-only
    assert mounts["/etc/fanwatch/fanwatch.toml"].startswith("./deploy/fanwatch.toml")
    assert (REPO / "deploy" / "fanwatch.toml").is_file()
    env = app["environment"]
    assert env["FANWATCH_CONFIG"] == "/etc/fanwatch/fanwatch.toml"
    assert env["FANWATCH_MQTT_PASSWORD_FILE"] == "/run/secrets/mqtt_password"
    assert "mqtt_password" in app["secrets"] and compose["secrets"]["mqtt_password"]["file"]
    assert not any("PASSWORD=" in str(v) for v in env.values()) and "FANWATCH_MQTT_PASSWORD" not in env
    parser = inference.build_parser()
    known = {configfile.env_name(o) for o in configfile._settings(parser)} | {configfile.CONFIG_ENV}
    assert set(env) <= known, set(env) - known  # every variable means something to inference.py
    assert app["stop_signal"] == "SIGINT" and app["read_only"] is True and "/tmp" in app["tmpfs"]
    assert app["logging"]["options"]["max-size"]  # months of logs must not fill the SD card
    broker = compose["services"]["mosquitto"]
    assert broker["profiles"] == ["broker"] and broker["image"].startswith("eclipse-mosquitto")
    assert (REPO / "deploy" / "mosquitto.conf").is_file()
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        proc = subprocess.run(["docker", "compose", "config", "-q"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def _unit() -> dict[str, str]:
    values = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), value.strip())
    return values


def test_systemd_unit_restarts_forever(tmp_path):
    unit = _unit()
    assert unit["Restart"] == "always" and float(unit["RestartSec"]) > 0
    assert unit["StartLimitIntervalSec"] == "0"  # a microphone missing at boot: retried, never given up
    assert unit["ExecStart"].startswith("/opt/fanwatch/.venv/bin/python /opt/fanwatch/inference.py")
    assert "--heartbeat /run/fanwatch/heartbeat" in unit["ExecStart"] and unit["RuntimeDirectory"] == "fanwatch"
    assert unit["KillSignal"] == "SIGINT" and unit["Group"] == "audio"
    assert unit["Environment"] == "FANWATCH_CONFIG=/etc/fanwatch/fanwatch.toml"
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze not installed")
    # the real paths of this checkout in place of /opt/fanwatch, so that verify can check the command
    text = UNIT.read_text().replace("/opt/fanwatch/.venv/bin/python", str(Path(sys.executable).resolve()))
    text = text.replace("/opt/fanwatch", str(REPO))
    copy = tmp_path / "fanwatch.service"
    copy.write_text(text)
    proc = subprocess.run([verify, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "fanwatch.service" not in proc.stderr, proc.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("Restart=always", "Restart=sometimes"))
    proc = subprocess.run([verify, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "sometimes" in proc.stderr  # the check above can fail


def test_dockerfile_healthcheck_reads_the_heartbeat():
    text = (REPO / "Dockerfile").read_text()
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    start = int(line.split("--start-period=")[1].split("s")[0])
    assert start >= 120  # a Pi 3B+ loads numpy and the model in about half a minute
    assert "ENV FANWATCH_HEARTBEAT=/tmp/" in text and '"fanwatch.health"' in text
    ignore = (REPO / ".dockerignore").read_text()
    for module in ("health", "mqtt", "configfile"):
        assert f"!fanwatch/{module}.py" in ignore
