"""Running as a service: the TOML/environment settings (fanwatch/configfile.py), the heartbeat and its check
(fanwatch/health.py), docker-compose.yml, the systemd unit and the image's HEALTHCHECK."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
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
