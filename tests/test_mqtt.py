"""MQTT publishing (fanwatch/mqtt.py, inference.py --mqtt) against a real Mosquitto on loopback.

Each test starts its own broker (tests/mqtt_broker.py) on a free port and watches it with a real paho
subscriber. End-to-end runs replay a synthetic fan recording through inference.py with the session's
trained model; ``--threshold-scale 0.01`` makes every window anomalous, so an alert is raised on the
third window whatever the model's scores are (what is checked is the publishing, not the model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
from mqtt_broker import Broker, Watcher, make_ca

import inference
from fanwatch import config, health, mqtt, runtime, synth
from fanwatch.errors import FanwatchError

REPO = Path(__file__).resolve().parents[1]
ENTITIES = {
    "binary_sensor/{d}/alert",
    "binary_sensor/{d}/input_problem",
    "sensor/{d}/state",
    "sensor/{d}/anomaly",
    "sensor/{d}/inference_ms",
    "sensor/{d}/dropped_audio",
    "sensor/{d}/device_losses",
    "sensor/{d}/mqtt_dropped",
}
# every window far above the threshold, and an alert level the first two windows reach (a 4 s clip)
ALWAYS_ALERT = ["--threshold-scale", "0.01", "--alert-level", "2"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mqtt_clips")
    out = {}
    for name, seconds in (("short", 4.0), ("long", 30.0)):
        path = folder / f"{name}.wav"
        sf.write(path, synth.render("high_speed", seconds, 7, sample_rate=16000, snr_db=15.0), 16000, subtype="PCM_16")
        out[name] = path
    return out


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def cli(model: Path, wav: Path, *args) -> list[str]:
    return [
        sys.executable,
        str(REPO / "inference.py"),
        "--model",
        str(model / runtime.MODEL_NAME),
        "--wav",
        str(wav),
        *map(str, args),
    ]


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def mqtt_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mqtt: ")]


def persistent_session(broker: Broker, client_id: str) -> None:
    """Make the broker keep QoS 1 messages for ``client_id`` while it is away (and across a restart)."""
    with Watcher(broker.port, topics=("fanwatch/#",), client_id=client_id, clean=False):
        pass


class Reader:
    """stdout of a running inference.py, line by line, on a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in records("".join(self.lines)) if predicate(r)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what} on stdout")


# --------------------------------------------------------------------------------------------------
# options


def test_urls_and_options_are_checked(tmp_path):
    assert mqtt.parse_url("mqtt://broker.local") == ("broker.local", 1883, False, None)
    assert mqtt.parse_url("mqtts://pi@10.0.0.2:9883") == ("10.0.0.2", 9883, True, "pi")
    assert mqtt.parse_url("localhost:1884") == ("localhost", 1884, False, None)
    for bad, says in (
        ("http://x", "mqtt://host"),
        ("mqtt://u:secret@x", "no password in the URL"),
        ("mqtt://x:99999", "port"),
        ("mqtt://x/topic", "--mqtt-topic"),
    ):
        with pytest.raises(FanwatchError, match=says):
            mqtt.parse_url(bad)
    with pytest.raises(FanwatchError, match="need an mqtts:// URL"):
        mqtt.settings_from("mqtt://x", ca=tmp_path / "ca.pem")
    with pytest.raises(FanwatchError, match="no such file"):
        mqtt.settings_from("mqtts://x", ca=tmp_path / "missing.pem")
    with pytest.raises(FanwatchError, match="wildcards"):
        mqtt.settings_from("mqtt://x", topic="plant/#")
    # the password: a file wins over the environment; never an option
    secret = tmp_path / "password"
    secret.write_text("from-file\nignored\n")
    assert (
        mqtt.settings_from("mqtt://x", password_file=secret, environ={mqtt.PASSWORD_ENV: "env"}).password == "from-file"
    )
    assert mqtt.settings_from("mqtt://x", environ={mqtt.PASSWORD_ENV: "env"}).password == "env"
    assert "env" not in repr(mqtt.settings_from("mqtt://x", environ={mqtt.PASSWORD_ENV: "env"}))
    proc = subprocess.run(
        [sys.executable, "inference.py", "--mqtt", "mqtt://x", "--mqtt-password", "p"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--mqtt-password: never on the command line" in proc.stderr
    assert "'p'" not in proc.stderr
    # ids and topics derive from the device name, made safe for topics and Home Assistant ids
    s = mqtt.settings_from("mqtt://x", device_name="Hall 2/fan #3")
    assert s.base == "fanwatch/Hall_2_fan_3" and s.client_id == "fanwatch-Hall_2_fan_3"


# --------------------------------------------------------------------------------------------------
# end to end: discovery, retained state, events in order, last will


def test_discovery_state_and_events_end_to_end(broker, trained_model, clips, tmp_path):
    heartbeat = tmp_path / "run" / "heartbeat"
    with Watcher(broker.port, topics=("fanwatch/#", "homeassistant/#")) as live:
        proc = subprocess.run(
            cli(
                trained_model,
                clips["short"],
                "--fast",
                "--json",
                *ALWAYS_ALERT,
                "--mqtt",
                broker.url,
                "--device-name",
                "Test Pi 1",
                "--heartbeat",
                heartbeat,
                "--mqtt-state-interval",
                "0.5",
            ),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        out = records(proc.stdout)
        expected_events = [r for r in out if r["type"] in ("event", "summary")]
        live.wait(
            lambda m: len([1 for t, _, _ in m if t == "fanwatch/Test_Pi_1/events"]) >= len(expected_events),
            what="every event",
        )
        # every event the loop printed, in the same order, with the same fields (the JSON Lines contract)
        assert live.json("fanwatch/Test_Pi_1/events") == expected_events
        names = [r.get("event") for r in expected_events]
        assert {"start", "device_opened", "state", "alert_raised"} <= set(names)
        assert live.on("fanwatch/Test_Pi_1/status")[0] == "online"
        assert live.on("fanwatch/Test_Pi_1/status")[-1] == "offline"  # a clean stop says offline itself
        states = live.json("fanwatch/Test_Pi_1/state")
        assert 1 <= len(states) < len([r for r in out if r["type"] == "window"])  # on change / every 0.5 s
    connected = f"mqtt: connected to {broker.url} as fanwatch-Test_Pi_1, publishing under fanwatch/Test_Pi_1/"
    assert mqtt_lines(proc.stderr) == [connected]

    # what a subscriber that comes later (Home Assistant after a restart) gets: the retained messages
    with Watcher(broker.port, topics=("fanwatch/#", "homeassistant/#")) as later:
        later.wait(lambda m: len(m) >= len(ENTITIES) + 2, what="retained messages")
        time.sleep(0.3)
        assert all(retain for _, _, retain in later.messages)
        assert later.on("fanwatch/Test_Pi_1/status") == ["offline"]
        state = later.json("fanwatch/Test_Pi_1/state")[-1]
        windows = [r for r in out if r["type"] == "window"]
        card = json.loads((trained_model / runtime.CARD_NAME).read_text())
        assert state["alert"] is True and state["state"] in card["labels"]
        assert state["state"] == windows[-1]["state"] and state["anomaly"] == windows[-1]["anomaly"]
        assert state["model_sha256"] == config.sha256_file(trained_model / runtime.MODEL_NAME)
        for key in ("confidence", "alert_kind", "updated_at", "inference_ms", "dropped_blocks", "device_losses"):
            assert key in state
        configs = {
            t.split("/", 1)[1].rsplit("/", 1)[0]: json.loads(p)
            for t, p, _ in later.messages
            if t.startswith("homeassistant/")
        }
    assert set(configs) == {e.format(d="Test_Pi_1") for e in ENTITIES}
    unique = {c["unique_id"] for c in configs.values()}
    assert len(unique) == len(configs) and all(u.startswith("fanwatch_Test_Pi_1_") for u in unique)
    for c in configs.values():
        assert c["availability_topic"] == "fanwatch/Test_Pi_1/status"
        assert (c["payload_available"], c["payload_not_available"]) == ("online", "offline")
        assert c["state_topic"] == "fanwatch/Test_Pi_1/state" and "{{" in c["value_template"]
        assert c["device"]["identifiers"] == ["fanwatch_Test_Pi_1"] and c["device"]["name"] == "Test Pi 1"
        assert c["device"]["sw_version"] and c["device"]["model"] and c["origin"]["name"] == "fanwatch"
    alert = configs["binary_sensor/Test_Pi_1/alert"]
    assert alert["device_class"] == "problem" and (alert["payload_on"], alert["payload_off"]) == ("ON", "OFF")
    problem = configs["binary_sensor/Test_Pi_1/input_problem"]
    assert problem["device_class"] == "problem" and problem["name"] == "Input problem"
    assert "value_json.input_fault" in problem["value_template"] and "entity_category" not in problem
    assert state["input_fault"] is None and state["alert_kinds"]  # the run's input was sound throughout
    assert configs["sensor/Test_Pi_1/state"]["device_class"] == "enum"
    assert configs["sensor/Test_Pi_1/state"]["options"] == card["labels"]
    assert configs["sensor/Test_Pi_1/anomaly"]["state_class"] == "measurement"
    for diagnostic in ("inference_ms", "dropped_audio", "device_losses"):
        assert configs[f"sensor/Test_Pi_1/{diagnostic}"]["entity_category"] == "diagnostic"
    # the heartbeat was written while audio was analysed
    ok, line = health.check(heartbeat, max_age=60)
    assert ok, line


def test_last_will_and_discovery_resent_when_home_assistant_comes_online(broker, trained_model, clips):
    with Watcher(broker.port, topics=("fanwatch/#", "homeassistant/#")) as live:
        proc = subprocess.Popen(
            cli(trained_model, clips["long"], "--quiet", "--mqtt", broker.url, "--device-name", "willtest"),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def configs(m):
                return [t for t, _, _ in m if t.startswith("homeassistant/") and t.endswith("/config")]

            live.wait(lambda m: len(configs(m)) >= len(ENTITIES), timeout=60, what="discovery")
            live.wait(lambda m: any(t == "fanwatch/willtest/state" for t, _, _ in m), what="a state")
            assert live.on("fanwatch/willtest/status") == ["online"]
            live.client.publish("homeassistant/status", "online", qos=1)  # Home Assistant's birth message
            live.wait(lambda m: len(configs(m)) >= 2 * len(ENTITIES), what="discovery sent again")
            assert proc.poll() is None
            proc.send_signal(signal.SIGKILL)  # no goodbye: the broker must say it, from the last will
            proc.wait(10)
            live.wait(
                lambda m: live.on("fanwatch/willtest/status")[-1:] == ["offline"],
                timeout=15,
                what="offline from the last will",
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    with Watcher(broker.port, topics=("fanwatch/willtest/status",)) as later:
        later.wait(lambda m: m, what="the retained status")
        assert later.messages == [("fanwatch/willtest/status", "offline", True)]


# --------------------------------------------------------------------------------------------------
# the broker away: down at start, stopped in the middle, a full outbox


def test_broker_down_at_start_does_not_stop_listening_and_the_alert_arrives_later(tmp_path, trained_model, clips):
    broker = Broker(tmp_path / "broker", persistence=True).start()
    persistent_session(broker, "late-subscriber")
    broker.stop()
    proc = subprocess.Popen(
        cli(
            trained_model,
            clips["long"],
            "--json",
            *ALWAYS_ALERT,
            "--mqtt",
            broker.url,
            "--device-name",
            "downpi",
            "--mqtt-retry-max",
            "1",
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = Reader(proc)
        raised = out.wait(lambda r: r.get("event") == "alert_raised", 60, "the alert")[0]
        n = len(records("".join(out.lines)))
        out.wait(lambda r: r.get("type") == "window" and r["t"] > raised["t"] + 1.0, 10, "windows after the alert")
        assert len(records("".join(out.lines))) > n  # still listening, with no broker
        broker.start()
        with Watcher(broker.port, topics=("fanwatch/#",), client_id="late-subscriber", clean=False) as w:
            got = w.wait(
                lambda m: [
                    json.loads(p)
                    for t, p, _ in m
                    if t == "fanwatch/downpi/events" and json.loads(p).get("event") == "alert_raised"
                ],
                timeout=30,
                what="the alert raised while the broker was down",
            )
            assert got[0] == raised
            events = w.json("fanwatch/downpi/events")
            assert [e["event"] for e in events][:2] == ["start", "device_opened"]  # in order, from the start
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        broker.stop()
    assert proc.returncode in (0, 130), stderr
    lines = mqtt_lines(stderr)
    assert "Traceback" not in stderr
    assert len([line for line in lines if "cannot connect" in line]) == 1, lines  # one line, not one per retry
    assert any(line.startswith("mqtt: connected to") for line in lines), lines


def _window(i: int, state: str, alert: bool = False) -> dict:
    return {
        "type": "window",
        "t": i * 0.5,
        "label": state,
        "confidence": 0.9,
        "anomaly": 1.5 if alert else 0.2,
        "state": state,
        "alert": alert,
        "inference_ms": 5.0,
        "drops": 0,
        "overflows": 0,
        "time": f"w{i}",
    }


def test_a_full_outbox_drops_state_first_keeps_alerts_and_delivers_in_order(tmp_path):
    broker = Broker(tmp_path / "broker", persistence=True).start()
    persistent_session(broker, "sub")
    logs = []
    publisher = mqtt.MqttPublisher(
        mqtt.settings_from(broker.url, device_name="q", queue_max=12, retry_max=1.0), log=logs.append
    )
    try:
        publisher({"type": "event", "event": "start", "labels": ["a", "b"], "model_sha256": "f" * 64})
        deadline = time.monotonic() + 10
        while not (publisher.connected and publisher.pending() == 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.connected and publisher.pending() == 0
        broker.stop()  # the broker goes away in the middle of a run
        deadline = time.monotonic() + 10
        while publisher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not publisher.connected
        alerts = []
        for i in range(40):  # every window changes the state: 40 state updates for a 12-message outbox
            publisher(_window(i, "ab"[i % 2], alert=10 <= i < 30))
            if i in (10, 30):
                alerts.append(
                    {
                        "type": "event",
                        "event": "alert_raised" if i == 10 else "alert_cleared",
                        "t": i * 0.5,
                        "kind": "anomaly",
                        "anomaly": 1.5,
                    }
                )
                publisher(alerts[-1])
            if i % 10 == 5:
                publisher({"type": "event", "event": "drops", "t": i * 0.5, "dropped_blocks": i})
        assert publisher.pending() == 12
        assert publisher.dropped["alert"] == 0 and publisher.dropped["state"] > 0
        broker.start()
        with Watcher(broker.port, topics=("fanwatch/#",), client_id="sub", clean=False) as w:
            w.wait(lambda m: any('"mqtt_dropped"' in p for _, p, _ in m), timeout=30, what="the drop report")
            events = w.json("fanwatch/q/events")
            states = w.json("fanwatch/q/state")
    finally:
        publisher.close()
        broker.stop()
    names = [e["event"] for e in events]
    assert [e for e in events if e["event"].startswith("alert_")] == alerts  # every alert, in order
    assert names.index("alert_raised") < names.index("alert_cleared") < names.index("mqtt_dropped")
    report = events[names.index("mqtt_dropped")]
    assert report["total_dropped_alerts"] == 0 and report["total_dropped_state"] == publisher.dropped["state"] > 0
    assert [s["updated_at"] for s in states] == sorted((s["updated_at"] for s in states), key=lambda x: int(x[1:]))
    assert states[-1]["updated_at"] == "w39" and states[-1]["alert"] is False  # the latest state wins
    assert states[-1]["mqtt_dropped"] > 0
    assert any("dropped" in line for line in logs) and any("connection lost" in line for line in logs)


UNKNOWN, KNOWN = "unknown_anomaly", "known_fault"
SILENCE = "digital silence (every sample is 0)"


def _kinds_window(i: int, kinds: list[str]) -> dict:
    """A window record as the loop writes it: ``alert`` and the active ``alert_kinds`` after the window."""
    return dict(_window(i, "on", alert=bool(kinds)), alert_kinds=list(kinds))


def _alert(event: str, kind: str, i: int) -> dict:
    return {"type": "event", "event": event, "t": i * 0.5, "kind": kind, "anomaly": 1.5, "time": f"e{i}"}


def test_concurrent_alert_kinds_and_input_faults_in_the_retained_state(broker):
    """Both alert kinds at once: clearing one leaves the alert on (Home Assistant's problem sensor must not
    flicker); an input fault (no window comes then) reaches the state at once, and so does its end."""
    publisher = mqtt.MqttPublisher(mqtt.settings_from(broker.url, device_name="kinds", state_interval=600.0))
    with Watcher(broker.port, topics=("fanwatch/kinds/state",)) as w:
        try:
            publisher({"type": "event", "event": "start", "labels": ["on"], "model_sha256": "f" * 64})
            # as the loop emits them: each window, then its events
            publisher(_kinds_window(0, []))
            publisher(_kinds_window(1, [UNKNOWN]))
            publisher(_alert("alert_raised", UNKNOWN, 1))
            publisher(_kinds_window(2, [UNKNOWN, KNOWN]))
            publisher(_alert("alert_raised", KNOWN, 2))
            publisher(_kinds_window(3, [UNKNOWN]))
            publisher(_alert("alert_cleared", KNOWN, 3))
            publisher(_kinds_window(4, [UNKNOWN]))  # nothing new: not published (interval 600 s)
            publisher({"type": "event", "event": "input_fault", "t": 2.5, "reason": SILENCE, "time": "f1"})
            publisher({"type": "event", "event": "input_ok", "t": 6.0, "time": "f2"})
            publisher(_kinds_window(12, []))
            publisher(_alert("alert_cleared", UNKNOWN, 12))
            # events alone (no window between them) tell the same
            publisher(_alert("alert_raised", UNKNOWN, 13))
            publisher(_alert("alert_raised", KNOWN, 14))
            publisher(_alert("alert_cleared", KNOWN, 15))
            states = w.wait(lambda m: len(m) >= 10 and [json.loads(p) for _, p, _ in m], what="ten states")
        finally:
            publisher.close()
    expected = [
        (False, None, [], None),
        (True, UNKNOWN, [UNKNOWN], None),
        (True, KNOWN, [UNKNOWN, KNOWN], None),
        (True, UNKNOWN, [UNKNOWN], None),  # known_fault cleared: the anomaly alert is still up
        (True, UNKNOWN, [UNKNOWN], SILENCE),  # the fault at once, though no window comes
        (True, UNKNOWN, [UNKNOWN], None),
        (False, None, [], None),
        (True, UNKNOWN, [UNKNOWN], None),
        (True, KNOWN, [UNKNOWN, KNOWN], None),
        (True, UNKNOWN, [UNKNOWN], None),
    ]
    assert [(s["alert"], s["alert_kind"], s["alert_kinds"], s["input_fault"]) for s in states] == expected
    assert states[4]["input_fault_since"] == "f1" and states[4]["updated_at"] == "w4"  # the last window's figures
    assert all(key in s for s in states for key in ("state", "confidence", "anomaly", "updated_at", "mqtt_dropped"))
    with Watcher(broker.port, topics=("fanwatch/kinds/state",)) as later:
        retained = later.wait(lambda m: m and json.loads(m[-1][1]), what="the retained state")
    assert (retained["alert"], retained["alert_kinds"]) == (True, [UNKNOWN])


def test_an_input_fault_from_a_replayed_dropout_reaches_the_state_and_the_events(broker, trained_model, tmp_path):
    import numpy as np

    x = synth.render("high_speed", 3.0, 7, sample_rate=16000)
    wav = tmp_path / "dropout.wav"
    sf.write(wav, np.concatenate([x, np.zeros(3 * 16000, np.float32), x]), 16000, subtype="FLOAT")
    with Watcher(broker.port, topics=("fanwatch/#",)) as live:
        proc = subprocess.run(
            cli(trained_model, wav, "--fast", "--json", "--mqtt", broker.url, "--device-name", "mute"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        out = records(proc.stdout)
        expected = [r for r in out if r["type"] in ("event", "summary")]
        live.wait(lambda m: len([1 for t, _, _ in m if t == "fanwatch/mute/events"]) >= len(expected), what="events")
        states = live.json("fanwatch/mute/state")
        events = live.json("fanwatch/mute/events")
    fault = next(r for r in out if r.get("event") == "input_fault")
    assert [e.get("event") for e in events] == [e.get("event") for e in expected]
    faulty = [s for s in states if s["input_fault"]]
    assert faulty and faulty[0]["input_fault"] == fault["reason"] and "digital silence" in fault["reason"]
    assert faulty[0]["input_fault_since"] == fault["time"]
    after = states[states.index(faulty[-1]) + 1 :]
    assert after and after[0]["input_fault"] is None  # input_ok clears it
    assert (
        states[-1]["input_fault"] is None
        and states[-1]["updated_at"] == [r for r in out if r["type"] == "window"][-1]["time"]
    )


# --------------------------------------------------------------------------------------------------
# authentication and TLS


def test_password_right_and_wrong(tmp_path, trained_model, clips):
    broker = Broker(tmp_path / "broker", users={"pi": "s3cret word"}).start()
    try:
        logs = []
        good = mqtt.MqttPublisher(
            mqtt.settings_from(broker.url, user="pi", device_name="authpi", environ={mqtt.PASSWORD_ENV: "s3cret word"}),
            log=logs.append,
        )
        try:
            with Watcher(broker.port, topics=("fanwatch/authpi/status",), user="pi", password="s3cret word") as w:
                w.wait(
                    lambda m: (
                        ("fanwatch/authpi/status", "online", True) in m
                        or ("fanwatch/authpi/status", "online", False) in m
                    ),
                    what="online with the right password",
                )
        finally:
            good.close()
        assert logs[0].startswith("mqtt: connected")

        wrong = tmp_path / "wrong-password"
        wrong.write_text("guess\n")
        env = {k: v for k, v in os.environ.items() if k != mqtt.PASSWORD_ENV}
        proc = subprocess.run(
            cli(
                trained_model,
                clips["short"],
                "--json",
                "--mqtt",
                broker.url,
                "--mqtt-user",
                "pi",
                "--mqtt-password-file",
                wrong,
                "--device-name",
                "authpi",
            ),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        broker.stop()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "guess" not in proc.stderr
    lines = [line for line in mqtt_lines(proc.stderr) if "not delivered at exit" not in line]
    assert len(lines) == 1 and "refused" in lines[0] and "--mqtt-user" in lines[0], proc.stderr
    out = records(proc.stdout)
    assert len([r for r in out if r["type"] == "window"]) >= 5 and out[-1]["type"] == "summary"  # kept listening


def _connects(settings: mqtt.MqttSettings, timeout: float = 10.0) -> tuple[bool, list[str]]:
    logs = []
    publisher = mqtt.MqttPublisher(settings, log=logs.append)
    deadline = time.monotonic() + timeout
    while not publisher.connected and time.monotonic() < deadline and len(logs) < 1:
        time.sleep(0.05)
    connected = publisher.connected
    publisher.close(timeout=1.0)
    return connected, logs


def test_tls_with_a_throwaway_ca(tmp_path):
    pki = make_ca(tmp_path / "pki")
    broker = Broker(tmp_path / "broker", tls=(pki["server.pem"], pki["server.key"])).start()
    url = f"mqtts://localhost:{broker.port}"
    try:
        ok, logs = _connects(mqtt.settings_from(url, ca=pki["ca.pem"], device_name="tlspi"))
        assert ok and logs[0].startswith("mqtt: connected to mqtts://localhost"), logs
        with Watcher(broker.port, topics=("fanwatch/tlspi/status",), tls_ca=pki["ca.pem"]) as w:
            w.wait(lambda m: m, what="the retained status over TLS")
            assert w.messages[-1][:2] == ("fanwatch/tlspi/status", "offline")

        started = time.monotonic()
        ok, logs = _connects(mqtt.settings_from(url, ca=pki["other.pem"], device_name="tlspi"))
        assert not ok and len(logs) == 1 and "certificate does not verify" in logs[0], logs
        assert time.monotonic() - started < 10  # close() does not hang on a broker it never reached

        ok, logs = _connects(mqtt.settings_from(url, ca=pki["other.pem"], insecure=True, device_name="tlspi"))
        assert ok, logs
    finally:
        broker.stop()


def test_help_names_every_service_option():
    text = " ".join(inference.build_parser().format_help().split())
    for option in (
        "--mqtt URL",
        "--mqtt-user",
        "--mqtt-password-file",
        "--mqtt-ca",
        "--mqtt-cert",
        "--mqtt-key",
        "--mqtt-insecure",
        "--mqtt-topic",
        "--device-name",
        "--no-discovery",
        "--discovery-prefix",
        "--mqtt-state-interval",
        "--mqtt-queue",
        "--mqtt-retry-max",
        "--config",
        "--heartbeat",
        mqtt.PASSWORD_ENV,
    ):
        assert option in text, option
    assert "--mqtt-password " not in text  # the option exists only to refuse a password on the command line


def test_inference_cli_builds_the_sinks_from_options(tmp_path, monkeypatch):
    monkeypatch.setenv(mqtt.PASSWORD_ENV, "pw")
    args = inference.parse_args(
        [
            "--mqtt",
            "mqtts://127.0.0.1:1",
            "--mqtt-user",
            "pi",
            "--device-name",
            "x",
            "--no-discovery",
            "--mqtt-insecure",
            "--heartbeat",
            str(tmp_path / "hb"),
        ]
    )
    sinks = inference.make_sinks(args)
    try:
        heartbeat, publisher = sinks
        assert isinstance(heartbeat, health.Heartbeat) and isinstance(publisher, mqtt.MqttPublisher)
        s = publisher.settings
        assert (s.host, s.port, s.tls, s.user, s.password, s.insecure, s.discovery) == (
            "127.0.0.1",
            1,
            True,
            "pi",
            "pw",
            True,
            False,
        )
    finally:
        for sink in sinks:
            sink.close()
