"""`streetgate demo` end to end, and `streetgate verify` on the batches it saved:
a batch altered by one byte, or replayed, is rejected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_demo_json_summary_and_saved_batches_verify(tmp_path: Path) -> None:
    saved = tmp_path / "batches"
    proc = _cli("demo", "--seconds", "14", "--outage", "3", "--json", "--save-batches", str(saved))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"produced", "delivered", "verified", "duplicates", "lost"}
    assert summary["lost"] == 0
    assert summary["produced"] == summary["verified"] > 1000
    assert summary["delivered"] >= summary["verified"]
    assert summary["wire_bytes_per_reading"] < 8
    # The light switched on and off by signed command, read back; the forged one refused.
    on, off, forged = summary["commands"]
    assert on.endswith("done, the light reads back 100"), on
    assert off.endswith("done, the light reads back 0"), off
    assert "rejected (unknown-key" in forged, forged
    files = sorted(p for p in saved.iterdir() if p.suffix == ".cose")
    assert (saved / "public.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(files) >= 5

    ok = _cli("verify", "--key", str(saved / "public.pem"), str(saved))
    assert ok.returncode == 0, ok.stderr
    packs = [json.loads(x) for x in ok.stdout.splitlines()]
    assert sum(len(pack) for pack in packs) == summary["verified"]
    assert all(pack[0]["bn"] == "cab-demo/" for pack in packs)
    assert all("n" in rec and "t" in rec for pack in packs for rec in pack)

    # one byte altered anywhere → rejected
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    raw = bytearray(files[2].read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tampered / "x.cose").write_bytes(bytes(raw))
    bad = _cli("verify", "--key", str(saved / "public.pem"), str(tampered))
    assert bad.returncode == 1
    assert "rejected" in bad.stderr
    assert bad.stdout == ""

    # the same batch twice → the second is a replay
    replay = tmp_path / "replay"
    replay.mkdir()
    shutil.copy(files[1], replay / "a.cose")
    shutil.copy(files[1], replay / "b.cose")
    rep = _cli("verify", "--key", str(saved / "public.pem"), str(replay))
    assert rep.returncode == 1
    assert "b.cose: rejected: replay" in rep.stderr


def test_demo_human_output(tmp_path: Path) -> None:
    proc = _cli("demo", "--seconds", "4")
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout
    assert "lost" in proc.stdout
    assert "summary:" in proc.stdout


def test_verify_subscribes_to_a_broker(tmp_path: Path) -> None:
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from gateway.broker import Mosquitto  # noqa: PLC0415
    from gateway.daemon import Gateway  # noqa: PLC0415
    from provisioning.keys import load_or_create_signing_key, public_key_pem  # noqa: PLC0415
    from tests.helpers.e2e import gateway_config  # noqa: PLC0415

    with Mosquitto(tmp_path / "broker") as broker:
        cfg = gateway_config(tmp_path / "state", broker.port,
                             {"sim": [{"instance": "v", "devices": 2, "interval": "50ms"}]},
                             uplink={"batch_linger": "200ms"})
        key = load_or_create_signing_key(cfg.gateway.path(cfg.gateway.signing_key))
        pub = tmp_path / "gw.pem"
        pub.write_text(public_key_pem(key.public_key()))
        verify = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gateway", "verify", "--key", str(pub), "--broker",
             f"127.0.0.1:{broker.port}", "--count", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # subscribed before the gateway publishes

        async def produce() -> None:
            gw = Gateway(cfg)
            task = asyncio.create_task(gw.run())
            deadline = time.monotonic() + 30
            while verify.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            gw.stop()
            await task

        asyncio.run(produce())
        out, err = verify.communicate(timeout=10)
    assert verify.returncode == 0, err
    packs = [json.loads(line) for line in out.splitlines()]
    assert len(packs) == 5
    assert all(pack[0]["bn"] == "cab-test/" for pack in packs)
    assert '"batches": 5' in err


def test_a_key_bound_to_one_gateway_cannot_sign_for_another(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    from gateway.batch import encode_batch  # noqa: PLC0415
    from gateway.cose import kid_for, sign1  # noqa: PLC0415
    from provisioning.keys import public_key_pem  # noqa: PLC0415

    key_a, key_b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    for name, key in (("a", key_a), ("b", key_b)):
        (tmp_path / f"{name}.pem").write_text(public_key_pem(key.public_key()))
    rows = [(1, "m/x/energy", "Wh", 1_700_000_000_000, 5, 0)]
    forged = sign1(encode_batch(gateway_id="cab-B", epoch=1, batch_seq=1, rows=rows),
                   key_a, kid_for(key_a.public_key()))
    msgs = tmp_path / "msgs"
    msgs.mkdir()
    (msgs / "1.cose").write_bytes(forged)
    bound = _cli("verify", "--key", f"cab-A={tmp_path / 'a.pem'}",
                 "--key", f"cab-B={tmp_path / 'b.pem'}", str(msgs))
    assert bound.returncode == 1
    assert "rejected: unknown-key" in bound.stderr
    assert bound.stdout == ""
    loose = _cli("verify", "--key", str(tmp_path / "a.pem"), "--key", str(tmp_path / "b.pem"),
                 str(msgs))
    assert "not bound to a gateway" in loose.stderr
