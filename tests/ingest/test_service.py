"""The ingest as a service: a real gateway, a real broker, workers that subscribe, store,
and acknowledge only after COMMIT; one killed with SIGKILL loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import Mosquitto
from ingest._db import Database
from ingest.query import completeness
from ingest.service import IngestWorker, WorkerOptions
from provisioning.keys import load_or_create_signing_key, public_key_pem
from tests.helpers.e2e import running_gateway
from tests.ingest.helpers import FakeGateway

GATEWAY = "cab-test"
SIM = {"sim": [{"instance": "sim-1", "devices": 4, "interval": "20ms"}]}
OpenDb = Callable[[str], Database]


def _trust_gateway(state: Path, tmp_path: Path) -> Path:
    """The gateway's key made before it starts (it keeps it), and its public PEM."""
    key = load_or_create_signing_key(state / "keys" / "signing.key")
    pem = tmp_path / "cab-test.pub.pem"
    pem.write_text(public_key_pem(key.public_key()))
    return pem


def _stored(db: Database) -> list[tuple[int, int]]:
    with db.transaction() as tx:
        return [(int(e), int(s)) for e, s in tx.all(
            "SELECT epoch, seq FROM readings WHERE gateway_id = ? ORDER BY epoch, seq",
            (GATEWAY,))]


def _wait_rows(db: Database, want: int, timeout: float = 30.0) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    rows = _stored(db)
    while len(rows) < want and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = _stored(db)
    return rows


class _Thread:
    """An in-process worker on its own thread."""

    def __init__(self, db: Database, broker: Mosquitto, **opts: object) -> None:
        self.worker = IngestWorker(db, WorkerOptions(port=broker.port, **opts))  # type: ignore[arg-type]
        self.worker.start()
        self.thread = threading.Thread(target=self.worker.run, name="ingest-test-worker")
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(10)
        self.worker.close()


def test_a_real_gateway_run_is_stored_exactly_once(mosquitto: Mosquitto, tmp_path: Path,
                                                   open_db: OpenDb) -> None:
    state = tmp_path / "state"
    pem = _trust_gateway(state, tmp_path)
    db = open_db(f"sqlite:///{tmp_path / 'ingest.db'}")
    from provisioning.keys import load_public_key  # noqa: PLC0415

    worker = _Thread(db, mosquitto, client_id="ingest-1")
    worker.worker.store.add_key(load_public_key(pem), GATEWAY)

    async def scenario() -> tuple[int, list[int]]:
        async with running_gateway(SIM, mosquitto, state) as run:
            await run.collect_until(lambda rs: len(rs) >= 300)
            result = await run.drain()
            return run.gateway.counters["produced"], result.seqs

    try:
        produced, seqs = asyncio.run(scenario())
        rows = _wait_rows(db, produced)
    finally:
        worker.stop()
    assert len(rows) == produced == len(set(seqs))
    assert sorted(s for _e, s in rows) == sorted(seqs)
    (epoch,) = completeness(db, GATEWAY)["epochs"]
    assert (epoch["received"], epoch["holes"], epoch["gaps"]) == (produced, [], 0)


def _ingest_proc(url: str, broker: Mosquitto, pem: Path, client_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-level", "warning", "ingest", "run", "--db", url,
         "--broker", f"127.0.0.1:{broker.port}", "--group", "city", "--client-id", client_id,
         "--key", f"{GATEWAY}={pem}", "--group-size", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # {"ingest": "ready"} once subscribed
    assert "ready" in line, proc.stderr.read() if proc.stderr else line
    return proc


def _stop(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1])["ingest"])


def test_two_workers_one_killed_mid_run_store_everything_once(
        mosquitto: Mosquitto, tmp_path: Path, postgres: str, open_db: OpenDb) -> None:
    state = tmp_path / "state"
    pem = _trust_gateway(state, tmp_path)
    db = open_db(postgres)
    a = _ingest_proc(postgres, mosquitto, pem, "ingest-a")
    b = _ingest_proc(postgres, mosquitto, pem, "ingest-b")

    async def scenario() -> tuple[int, list[int]]:
        nonlocal a
        async with running_gateway(SIM, mosquitto, state) as run:
            await run.collect_until(lambda rs: len(rs) >= 200)
            a.kill()  # SIGKILL: whatever it had not committed, it had not acked
            a.communicate(timeout=10)
            await run.collect_until(lambda rs: len(rs) >= 500)
            # Restarted under its id (as systemd would), it gets back its session's messages.
            a = await asyncio.to_thread(_ingest_proc, postgres, mosquitto, pem, "ingest-a")
            await run.collect_until(lambda rs: len(rs) >= 700)
            result = await run.drain()
            return run.gateway.counters["produced"], result.seqs

    try:
        produced, seqs = asyncio.run(scenario())
        rows = _wait_rows(db, produced)
    finally:
        stats = [_stop(p) for p in (a, b) if p.poll() is None]
    assert len(rows) == produced == len(set(seqs))
    assert sorted(s for _e, s in rows) == sorted(seqs)
    assert all(int(str(s["stored"])) > 0 for s in stats), stats  # both shared the load
    (epoch,) = completeness(db, GATEWAY)["epochs"]
    assert (epoch["received"], epoch["holes"]) == (produced, [])


def _publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_replay_after_a_worker_restart_is_refused(mosquitto: Mosquitto, tmp_path: Path,
                                                   open_db: OpenDb) -> None:
    gw = FakeGateway(GATEWAY)
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    db = open_db(url)
    message = gw.batch(gw.rows(25))
    topic = f"streetgate/{GATEWAY}/batch"
    for _run in range(2):  # the second worker is a fresh process's view: state from the DB
        worker = _Thread(open_db(url), mosquitto)
        worker.worker.store.add_key(gw.key.public_key(), GATEWAY)
        try:
            _publish(mosquitto, topic, message)
            deadline = time.monotonic() + 10
            while worker.worker.stats.received < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.stop()
        assert worker.worker.stats.by_status == ({"ok": 1} if _run == 0 else {"replay": 1})
    assert len(_stored(db)) == 25
    assert completeness(db, GATEWAY)["epochs"][0]["refused"] == {"replay": 1}


def test_the_query_command_prints_json(tmp_path: Path, open_db: OpenDb) -> None:
    from ingest.store import IngestStore  # noqa: PLC0415

    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    gw = FakeGateway(GATEWAY)
    store = IngestStore(open_db(url))
    store.add_key(gw.key.public_key(), GATEWAY)
    store.ingest([gw.message(gw.batch(gw.rows(6)))])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def run(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "gateway", "ingest", "query", "--db", url,
                              *args], capture_output=True, text=True, check=True, env=env)
        return out.stdout

    assert [r["point"] for r in json.loads(run("latest"))] == [
        "meter-1/p0", "meter-1/p1", "meter-1/p2"]
    senml = json.loads(run("range", "--gateway", GATEWAY, "--point", "meter-1/p1", "--senml"))
    assert [r.get("v") for r in senml] == [230.01, 230.04]
    assert senml[0]["bn"] == f"{GATEWAY}/"
    report = json.loads(run("report", "--gateway", GATEWAY))
    assert report["epochs"][0]["received"] == 6
