"""A real Mosquitto broker on a free loopback port, and a real paho subscriber, for the MQTT tests.

Debian's ``mosquitto`` package (``make setup`` installs it when run as root). :class:`Broker` writes a
config (anonymous or with a password file, plain or TLS, with or without persistence), starts
``mosquitto -c`` and waits until the port answers; it can be stopped and started again on the same port.
:class:`Watcher` subscribes with paho-mqtt and records every message it gets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def need_mosquitto() -> str:
    if MOSQUITTO is None:
        pytest.fail("the MQTT tests need Debian's mosquitto (run `make setup` as root, or apt-get install mosquitto)")
    return MOSQUITTO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(
        self,
        folder: Path,
        users: dict[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        persistence: bool = False,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.folder}/",
            "log_dest stderr",
            "log_type all",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to user mosquitto, who cannot read pytest's tmp
        if users:
            if MOSQUITTO_PASSWD is None:
                pytest.fail("mosquitto_passwd not found (Debian package mosquitto)")
            passwords = self.folder / "passwords"
            passwords.write_text("")
            for user, password in users.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True, capture_output=True
                )
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> Broker:
        need_mosquitto()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a clean stop (persistence saved)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Watcher:
    """A paho subscriber that keeps (topic, payload text, retain flag) of every message, in arrival order."""

    def __init__(
        self,
        port: int,
        topics=("#",),
        client_id: str | None = None,
        clean: bool = True,
        tls_ca: Path | None = None,
        user: str | None = None,
        password: str | None = None,
    ):
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"watch-{id(self)}",
            clean_session=clean,
            protocol=paho.MQTTv311,
        )
        if user:
            self.client.username_pw_set(user, password)
        if tls_ca:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.topics = topics
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def _on_connect(self, client, _u, _f, reason_code, _p):
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, _c, _u, message):
        with self.lock:
            self.messages.append((message.topic, message.payload.decode("utf-8", "replace"), bool(message.retain)))

    def __enter__(self) -> Self:
        self.client.connect("127.0.0.1", self.port, 30)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the watcher could not subscribe"
        return self

    def __exit__(self, *exc) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[str]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic)]

    def wait(self, predicate, timeout: float = 20.0, what: str = "messages"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = list(self.messages)
            result = predicate(snapshot)
            if result:
                return result
            time.sleep(0.05)
        with self.lock:
            topics = sorted({t for t, _, _ in self.messages})
        raise AssertionError(f"timed out waiting for {what}; got {len(self.messages)} message(s) on {topics}")


def make_ca(folder: Path, host: str = "localhost") -> dict[str, Path]:
    """A throwaway CA, a server certificate it signs for ``host`` and 127.0.0.1, and a second, unrelated CA."""
    openssl = shutil.which("openssl") or pytest.fail("openssl not found")
    folder.mkdir(parents=True, exist_ok=True)
    p = {
        name: folder / name
        for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext.cnf", "other.key", "other.pem")
    }

    def run(*args):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)

    for key, pem, cn in (("ca.key", "ca.pem", "fanwatch test CA"), ("other.key", "other.pem", "unrelated CA")):
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            p[key],
            "-out",
            p[pem],
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
        )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        p["server.key"],
        "-out",
        p["server.csr"],
        "-subj",
        f"/CN={host}",
    )
    p["ext.cnf"].write_text(f"subjectAltName=DNS:{host},IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        p["server.csr"],
        "-CA",
        p["ca.pem"],
        "-CAkey",
        p["ca.key"],
        "-CAcreateserial",
        "-out",
        p["server.pem"],
        "-days",
        "2",
        "-extfile",
        p["ext.cnf"],
    )
    return p
