"""GWMP datagrams (Lora-net/packet_forwarder PROTOCOL.TXT), pure parsing and building."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.lora import gwmp
from drivers.lora.gwmp import GwmpError, Kind, RxPacket
from drivers.lora.sim import garbage_datagrams

EUI = bytes.fromhex("AA555A0000000101")

# PROTOCOL.TXT §4: the first rxpk of the example, and the stat example.
RXPK_EXAMPLE = {
    "time": "2013-03-31T16:21:17.528002Z", "tmst": 3512348611, "chan": 2, "rfch": 0,
    "freq": 866.349812, "stat": 1, "modu": "LORA", "datr": "SF7BW125", "codr": "4/6",
    "rssi": -35, "lsnr": 5.1, "size": 32,
    "data": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
}
FSK_EXAMPLE = {"time": "2013-03-31T16:21:17.530974Z", "tmst": 3512348514, "chan": 9,
               "rfch": 1, "freq": 869.1, "stat": 1, "modu": "FSK", "datr": 50000,
               "rssi": -75, "size": 16, "data": "VEVTVF9QQUNLRVRfMTIzNA=="}
STAT_EXAMPLE = {"time": "2014-01-12 08:59:28 GMT", "lati": 46.24, "long": 3.2523, "alti": 145,
                "rxnb": 2, "rxok": 2, "rxfw": 2, "ackr": 100.0, "dwnb": 2, "txnb": 2}


def push(payload: object, token: int = 0x1234, version: int = 2) -> bytes:
    return bytes([version]) + token.to_bytes(2, "big") + b"\x00" + EUI + json.dumps(
        payload).encode()


def test_push_data_and_its_ack() -> None:
    msg = gwmp.parse(push({"rxpk": [RXPK_EXAMPLE, FSK_EXAMPLE], "stat": STAT_EXAMPLE}))
    assert (msg.version, msg.token, msg.kind, msg.gateway_eui) == \
        (2, 0x1234, Kind.PUSH_DATA, "AA555A0000000101")
    # §3.3: PUSH_ACK = version, the same token, 0x01.
    assert gwmp.ack_for(msg) == bytes([2, 0x12, 0x34, 0x01])
    lora = gwmp.parse_rxpk(msg.payload["rxpk"][0])
    assert lora == RxPacket(data=bytes(range(32)), freq=866.349812, datr="SF7BW125",
                            codr="4/6", rssi=-35, lsnr=5.1, tmst=3512348611,
                            time="2013-03-31T16:21:17.528002Z", chan=2, rfch=0, crc=1,
                            modu="LORA")
    assert isinstance(lora.rssi, int)
    fsk = gwmp.parse_rxpk(msg.payload["rxpk"][1])
    assert (fsk.data, fsk.datr, fsk.lsnr, fsk.modu) == (b"TEST_PACKET_1234", 50000, None, "FSK")
    assert gwmp.parse_stat(msg.payload["stat"]) == STAT_EXAMPLE


def test_pull_data_ack_and_version_1() -> None:
    # §5.2/§5.3; the v1 layout is the same, and the ACK keeps the sender's version.
    msg = gwmp.parse(bytes([1, 0xAB, 0xCD, 0x02]) + EUI)
    assert msg.kind is Kind.PULL_DATA
    assert msg.payload == {}
    assert gwmp.ack_for(msg) == bytes([1, 0xAB, 0xCD, 0x04])


def test_tx_ack_with_and_without_json() -> None:
    # §5.5: TX_ACK may carry {"txpk_ack": {...}} or nothing; it is not answered.
    bare = gwmp.parse(bytes([2, 0, 7, 0x05]) + EUI)
    assert bare.kind is Kind.TX_ACK
    assert bare.payload == {}
    assert gwmp.ack_for(bare) is None
    full = gwmp.parse(bytes([2, 0, 7, 0x05]) + EUI + b'{"txpk_ack":{"error":"NONE"}}')
    assert full.payload == {"txpk_ack": {"error": "NONE"}}


def test_rsig_signal_of_newer_forwarders() -> None:
    # SX1301 v2 forwarders report RSSI/SNR per antenna in "rsig" instead of at top level.
    item = {"data": "AAAA", "stat": 1, "rsig": [{"ant": 0, "chan": 0, "rssic": -97, "lsnr": 2.0},
                                                 {"ant": 1, "chan": 0, "rssic": -91,
                                                  "lsnr": 4.5}]}
    p = gwmp.parse_rxpk(item)
    assert (p.rssi, p.lsnr) == (-91, 4.5)


def test_unpadded_base64_is_accepted() -> None:
    assert gwmp.parse_rxpk({"data": "AAECAw"}).data == b"\x00\x01\x02\x03"
    assert gwmp.parse_rxpk({"data": "AAE"}).data == b"\x00\x01"


@pytest.mark.parametrize(("index", "counter"), list(enumerate(
    ["malformed", "bad_version", "bad_json", None, "unknown_type", None, "malformed", None,
     None, "bad_json", "unexpected_type"])))
def test_garbage_datagrams_are_classified(index: int, counter: str | None) -> None:
    data = garbage_datagrams()[index]
    if counter is None:  # the header is fine; the damage is inside rxpk
        gwmp.parse(data)
        return
    with pytest.raises(GwmpError) as err:
        gwmp.parse(data)
    assert err.value.counter == counter


@pytest.mark.parametrize(("item", "counter"), [
    ({"data": "!!not base64!!"}, "bad_base64"),
    ({"data": 17}, "malformed"),
    ({"stat": 1}, "malformed"),
    ({"data": "AAAA", "size": 4}, "malformed"),
    ([1, 2, 3], "malformed"),
])
def test_bad_rxpk(item: object, counter: str) -> None:
    with pytest.raises(GwmpError) as err:
        gwmp.parse_rxpk(item)
    assert err.value.counter == counter


@pytest.mark.parametrize("raw", [b"NaN", b'{"rxpk": NaN}', b"[" * 100_000, b"\xff\xfe"])
def test_hostile_json(raw: bytes) -> None:
    with pytest.raises(GwmpError) as err:
        gwmp.parse(bytes([2, 0, 1, 0]) + EUI + raw)
    assert err.value.counter == "bad_json"


def test_stat_keeps_only_typed_known_fields() -> None:
    assert gwmp.parse_stat({"rxnb": "2", "ackr": True, "temp": 41.5, "x": 1}) == {"temp": 41.5}


def test_build_roundtrip() -> None:
    packet = RxPacket(data=b"\x40\x01", freq=868.3, datr="SF9BW125", rssi=-100, lsnr=-3.5)
    msg = gwmp.parse(gwmp.build_push_data(9, "0102030405060708", {"rxpk": [
        gwmp.rxpk_json(packet)]}))
    assert msg.gateway_eui == "0102030405060708"
    assert gwmp.parse_rxpk(msg.payload["rxpk"][0]) == packet
    assert gwmp.parse(gwmp.build_pull_data(9, "0102030405060708")).kind is Kind.PULL_DATA


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64) | st.builds(lambda v, t, b: bytes([v, 0, 0, t]) + EUI + b,
                                          st.integers(0, 3), st.integers(0, 6),
                                          st.binary(max_size=40)))
def test_random_datagrams_never_crash(data: bytes) -> None:
    counter = None
    try:
        gwmp.ack_for(gwmp.parse(data))
    except GwmpError as exc:
        counter = exc.counter
    assert counter in {None, "malformed", "bad_version", "unknown_type", "unexpected_type",
                       "bad_json"}


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["data", "size", "rssi", "lsnr", "stat",
                                                       "rsig", "rssic", "freq", "datr"]),
                                      inner, max_size=5), max_leaves=12))
def test_random_rxpk_and_stat_never_crash(item: object) -> None:
    for parse in (gwmp.parse_rxpk, gwmp.parse_stat):
        with contextlib.suppress(GwmpError):
            parse(item)


def test_a_number_too_big_for_a_float_is_not_a_radio_figure() -> None:
    """One PUSH_DATA with a 400-digit RSSI must not take the driver down."""
    item = {"data": "QNobASaAAQABt+VRoT4=", "freq": 868.1, "rssi": int("9" * 400)}
    pkt = gwmp.parse_rxpk(item)
    assert pkt.rssi is None
