"""SenML output (RFC 8428), checked field by field."""

from __future__ import annotations

import base64
import json
import math

import pytest

from buffer.types import Loss
from drivers.api import Quality, Reading
from ingest.senml import SenMLError, senml_json, senml_records

TS = 1_733_000_000_123


def test_records_field_by_field() -> None:
    readings = [
        (1, Reading("sim-1/dev-000/voltage", TS, 230.25, unit="V")),
        (2, Reading("sim-1/dev-000/energy", TS, 2**40 + 1, unit="Wh")),
        (3, Reading("sim-1/dev-000/door_open", TS + 1000, True)),
        (4, Reading("sim-1/dev-000/label", TS, "ok")),
        (5, Reading("sim-1/dev-000/raw", TS, b"\xfb\xff\x00")),
    ]
    recs = senml_records("cab-0042", readings)
    assert recs[0] == {"bn": "cab-0042/", "n": "sim-1/dev-000/voltage", "u": "V",
                       "t": 1_733_000_000.123, "v": 230.25}
    assert recs[1] == {"n": "sim-1/dev-000/energy", "u": "Wh", "t": 1_733_000_000.123,
                       "v": 2**40 + 1}
    assert recs[2] == {"n": "sim-1/dev-000/door_open", "t": 1_733_000_001.123, "vb": True}
    assert recs[3]["vs"] == "ok"
    assert recs[4]["vd"] == "-_8A"  # base64url, no padding (RFC 8428 §4.3, RFC 4648 §5)
    assert base64.urlsafe_b64decode(recs[4]["vd"] + "=" * (-len(recs[4]["vd"]) % 4)) == (
        b"\xfb\xff\x00")
    assert all("bn" not in r for r in recs[1:])
    assert all(isinstance(r["t"], float) for r in recs)


def test_bad_quality_has_no_measurement_but_a_must_understand_reason() -> None:
    recs = senml_records("gw", [
        Reading("m/temp", TS, None, Quality.TIMEOUT, "Cel"),
        Reading("m/temp", TS, 2, Quality.EXCEPTION, "Cel"),
        Reading("m/temp", TS, None),
    ])
    assert recs[0] == {"bn": "gw/", "n": "m/temp", "u": "Cel", "t": TS / 1000, "q_": "timeout"}
    assert recs[1] == {"n": "m/temp", "u": "Cel", "t": TS / 1000, "v": 2, "q_": "exception"}
    assert recs[2] == {"n": "m/temp", "t": TS / 1000, "q_": "empty"}
    # Labels ending in "_" are must-understand (RFC 8428 §4.4).
    assert all(k.endswith("_") for r in recs for k in r if k not in {"bn", "n", "u", "t", "v"})


def test_plain_tooling_mode_leaves_bad_readings_out() -> None:
    readings = [Reading("m/a", TS, None, Quality.CRC_ERROR), Reading("m/b", TS, 1.5)]
    recs = senml_records("gw", readings, include_bad=False)
    assert recs == [{"bn": "gw/", "n": "m/b", "t": TS / 1000, "v": 1.5}]


def test_non_finite_floats_and_valid_json() -> None:
    readings = [Reading("m/x", TS, v) for v in (math.nan, math.inf, -math.inf, -0.0)]
    text = senml_json("gw", readings)

    def no_constants(name: str) -> None:
        raise AssertionError(f"JSON must not contain {name}")

    recs = json.loads(text, parse_constant=no_constants)
    assert [r.get("nf_") for r in recs] == ["nan", "inf", "-inf", None]
    assert all("v" not in r for r in recs[:3])
    assert recs[3]["v"] == 0.0


@pytest.mark.parametrize("point", ["m/ä", "m/a b", "_m/x"])
def test_names_outside_rfc8428_charset_are_refused(point: str) -> None:
    gateway = "gw" if not point.startswith("_") else ""
    with pytest.raises(SenMLError, match="RFC 8428"):
        senml_records(gateway, [Reading(point, TS, 1)])


def test_loss_records_say_what_was_lost_with_must_understand_fields() -> None:
    losses = [Loss(2**62 + 1, 90, 100, 11, TS, TS + 5000, "history-lost"),
              Loss(7, 101, None, None, TS, None, "moved-aside"),
              Loss(8, None, None, None, None, None, "unclean-stop")]
    recs = senml_records("gw", [Reading("m/a", TS, 1.5)], losses=losses)
    assert recs[0] == {"bn": "gw/", "n": "m/a", "t": TS / 1000, "v": 1.5}
    assert recs[1] == {"loss_": "history-lost", "ep_": str(2**62 + 1), "fs_": 90, "ls_": 100,
                       "v": 11, "t": TS / 1000, "et_": (TS + 5000) / 1000}
    assert recs[2] == {"loss_": "moved-aside", "ep_": "7", "fs_": 101, "t": TS / 1000}  # open
    assert recs[3] == {"loss_": "unclean-stop", "ep_": "8"}  # no seq, nothing else known
    assert all(k.endswith("_") for r in recs[1:] for k in r if k not in {"v", "t"})


def test_a_pack_of_losses_only_carries_the_base_name_and_plain_mode_drops_them() -> None:
    loss = Loss(3, None, None, 4, TS, TS, "exit-unwritten")
    recs = json.loads(senml_json("cab-1", [], losses=[loss]))
    assert recs == [{"bn": "cab-1/", "loss_": "exit-unwritten", "ep_": "3", "v": 4,
                     "t": TS / 1000, "et_": TS / 1000}]
    assert senml_records("cab-1", [], losses=[loss], include_bad=False) == []
    with pytest.raises(SenMLError, match="RFC 8428"):
        senml_records("cab 1", [], losses=[loss])
