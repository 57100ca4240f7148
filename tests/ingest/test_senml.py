"""SenML as RFC 8428 receivers expect: plain packs carry no extension field, times before
2**28 s are marked, and the CBOR form uses the RFC's integer labels."""

from __future__ import annotations

import math

import cbor2

from drivers.api import Quality, Reading
from ingest.senml import senml_cbor, senml_records

TS = 1_733_000_000_000


def test_a_plain_pack_has_no_extension_field() -> None:
    readings = [Reading("m/a", TS, 1.5), Reading("m/b", TS, math.nan),
                Reading("m/c", 5_000, 2), Reading("m/d", TS, None, Quality.TIMEOUT)]
    plain = senml_records("gw", readings, include_bad=False)
    assert plain == [{"bn": "gw/", "n": "m/a", "t": TS / 1000, "v": 1.5}]
    assert not [k for r in plain for k in r if k.endswith("_")]


def test_an_unsynced_time_is_marked_in_the_full_pack() -> None:
    (rec,) = senml_records("gw", [Reading("m/c", 5_000, 2)])
    assert (rec["t"], rec["clk_"]) == (5.0, "unsynced")


def test_senml_cbor_uses_the_rfc_labels() -> None:
    data = cbor2.loads(senml_cbor("gw", [Reading("m/a", TS, b"\x00\xff", unit="B"),
                                         Reading("m/b", TS, True)]))
    assert data == [{-2: "gw/", 0: "m/a", 1: "B", 6: TS / 1000, 8: b"\x00\xff"},
                    {0: "m/b", 6: TS / 1000, 4: True}]
