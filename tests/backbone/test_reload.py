"""SIGHUP reload: drivers added, removed or changed without losing readings; a broken
config is rejected and the running one kept."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.broker import Mosquitto
from gateway.config import load_config
from gateway.daemon import Gateway
from tests.helpers.e2e import Run


def _write(path: Path, port: int, state: Path, drivers: str) -> None:
    path.write_text(f"""
[gateway]
id = "cab-reload"
state_dir = "{state}"
[buffer]
commit_window = "20ms"
[uplink]
port = {port}
batch_linger = "50ms"
{drivers}
""")


A = '[[drivers.sim]]\ninstance = "a"\ndevices = 2\ninterval = "20ms"\n'
B = '[[drivers.sim]]\ninstance = "b"\ndevices = 3\ninterval = "20ms"\n'
B2 = '[[drivers.sim]]\ninstance = "b"\ndevices = 1\ninterval = "20ms"\n'


def test_reload_adds_removes_changes_drivers_and_rejects_bad_config(tmp_path: Path) -> None:
    from gateway.cose import kid_for  # noqa: PLC0415
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415
    from ingest.verify import Verifier  # noqa: PLC0415
    from provisioning.keys import load_or_create_signing_key  # noqa: PLC0415

    conf = tmp_path / "gateway.toml"

    async def scenario(broker: Mosquitto) -> None:
        _write(conf, broker.port, tmp_path / "state", A)
        cfg = load_config(conf)
        key = load_or_create_signing_key(cfg.gateway.path(cfg.gateway.signing_key))
        sub = BatchSubscriber(broker.host, broker.port, "streetgate/+/batch")
        sub.start()
        gw = Gateway(cfg)
        task = asyncio.create_task(gw.run())
        await gw.ready.wait()
        run = Run(gw, Verifier({kid_for(key.public_key()): key.public_key()}), sub, task)
        try:
            await run.collect_until(lambda rs: any("/a/" in f"/{r.point}" for r in rs))
            _write(conf, broker.port, tmp_path / "state", B)
            assert await gw.reload(conf)
            await run.collect_until(lambda rs: any(r.point.startswith("b/") for r in rs))
            assert set(gw.drivers) == {"b"}
            n_b_points = len({r.point for r in run.result.readings if r.point.startswith("b/")})
            # change b: fewer devices
            _write(conf, broker.port, tmp_path / "state", B2)
            assert await gw.reload(conf)
            t_changed = time.time_ns() // 1_000_000
            # broken file: rejected, old config kept
            conf.write_text(conf.read_text() + "\n[uplink]\nport = 'x'\n")
            assert not await gw.reload(conf)
            assert gw.reloads == {"ok": 2, "rejected": 1}
            assert set(gw.drivers) == {"b"}
            mark = len(run.result.readings)
            await run.collect_until(lambda rs: len(rs) > mark + 50)
            result = await run.drain()
        finally:
            gw.stop()
            await task
            sub.stop()
        assert n_b_points == 3 * 4
        seqs = result.seqs
        assert len(seqs) == gw.counters["produced"] == len(set(seqs))
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
        late = {r.point.split("/")[1] for r in result.readings
                if r.point.startswith("b/") and r.ts > t_changed}
        assert late == {"dev-000"}

    with Mosquitto(tmp_path / "broker") as broker:
        asyncio.run(scenario(broker))


def test_sighup_reaches_the_daemon(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        conf = tmp_path / "gateway.toml"
        _write(conf, broker.port, tmp_path / "state", A)
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gateway", "run", "--config", str(conf)],
            stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2.0)
            conf.write_text(conf.read_text() + "\nbogus = 1\n")
            os.kill(proc.pid, signal.SIGHUP)
            time.sleep(1.0)
            assert proc.poll() is None, "a rejected reload must not stop the daemon"
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "reload rejected" in err
        assert "bogus: unknown key" in err
