"""`streetgate verify` shows gaps and loss records beside the holes, and losses in SenML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffer.types import Gap, Loss
from gateway.batch import encode_batch
from gateway.cli import build_parser
from gateway.cose import kid_for, sign1
from ingest._verify_cli import describe_gap, describe_loss
from provisioning.keys import public_key_pem

TS = 1_733_000_000_000  # 2024-11-30T20:53:20Z


def test_loss_lines_show_range_count_time_and_reason() -> None:
    assert describe_loss(Loss(7, 90, 100, 11, TS, TS + 1500, "history-lost")) == (
        "loss in epoch 7: seqs 90-100, 11 reading(s), ts 2024-11-30T20:53:20.000Z to "
        "2024-11-30T20:53:21.500Z, reason 'history-lost'")
    assert describe_loss(Loss(7, 101, None, None, TS, None, "moved-aside")) == (
        "loss in epoch 7: seqs 101-open, count unknown, ts 2024-11-30T20:53:20.000Z to ?, "
        "reason 'moved-aside'")
    assert describe_loss(Loss(8, None, None, 3, None, None, "exit-unwritten")) == (
        "loss in epoch 8: no seq, 3 reading(s), time unknown, reason 'exit-unwritten'")
    assert describe_loss(Loss(1, 1, 1, 1, 10**18, -(10**18), "r")).endswith(
        f"ts {10**18} ms to {-(10**18)} ms, reason 'r'")  # beyond what a datetime can show


def test_gap_lines_show_what_the_buffer_dropped() -> None:
    assert describe_gap(Gap(11, 15, 5, TS, TS, ("m/a",), True)) == (
        "gap: seqs 11-15, 5 reading(s) dropped by the buffer, ts 2024-11-30T20:53:20.000Z to "
        "2024-11-30T20:53:20.000Z, points 'm/a' and more")


def _verify(tmp_path: Path, *extra: str) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "gw.pem").write_text(public_key_pem(key.public_key()))
    msgs = tmp_path / "msgs"
    msgs.mkdir()
    rows = [(s, "m/a", None, TS + s, s, 0) for s in (1, 2, 3, 9)]
    payloads = [
        encode_batch(gateway_id="cab-1", epoch=5, batch_seq=1, rows=rows,
                     gaps=[Gap(4, 5, 2, TS, TS, ("m/a",))],
                     losses=[Loss(5, 6, 7, 2, TS, TS, "power-loss")]),
        encode_batch(gateway_id="cab-1", epoch=6, batch_seq=1, rows=[],
                     losses=[Loss(5, 9, None, None, None, None, "moved-aside")]),
    ]
    for i, payload in enumerate(payloads):
        (msgs / f"{i}.cose").write_bytes(sign1(payload, key, kid_for(key.public_key())))
    args = build_parser(["verify"]).parse_args(["verify", "--key", str(tmp_path / "gw.pem"),
                                               *extra, str(msgs)])
    assert args.func(args) == 0


def test_verify_prints_gaps_losses_and_holes(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _verify(tmp_path)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    first = str(tmp_path / "msgs" / "0.cose")
    assert f"{first}: gap: seqs 4-5, 2 reading(s) dropped by the buffer" in err
    assert f"{first}: loss in epoch 5: seqs 6-7, 2 reading(s)" in err
    assert f"{first}: missing so far: [(8, 8)]" in lines
    assert ("1.cose: loss in epoch 5: seqs 9-open, count unknown, time unknown, reason "
            "'moved-aside'") in err
    stats = json.loads(lines[-1])["verify"]
    assert (stats["losses"], stats["lost_reported"], stats["gaps"]) == (2, 2, 1)
    packs = [json.loads(line) for line in out.splitlines()]
    assert [[r.get("loss_") for r in pack] for pack in packs] == [
        [None, None, None, None, "power-loss"], ["moved-aside"]]
    assert packs[1] == [{"bn": "cab-1/", "loss_": "moved-aside", "ep_": "5", "fs_": 9}]


def test_plain_senml_leaves_loss_records_out(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _verify(tmp_path, "--plain-senml")
    out, err = capsys.readouterr()
    packs = [json.loads(line) for line in out.splitlines()]
    assert [len(pack) for pack in packs] == [4]  # the readings; no loss-only pack
    assert all(k in {"bn", "n", "t", "v"} for pack in packs for r in pack for k in r)
    assert "loss in epoch 5: seqs 9-open" in err  # still reported to the operator
