"""LoRaWAN 1.0.x frames against public test vectors, and the 32-bit FCnt rules.

Vectors (each test names its source):
- anthonykirby/lora-packet test/test_parse.js, test/test_mic.js, test/test_decrypt.js,
  test/test_fopts.js (NwkSKey 44024241..., AppSKey ec925802...).
- brocaar/lorawan phypayload_test.go: TestPHYPayloadData and ExampleNewPHYPayload.
- mcci-catena/arduino-lmic style unit test "test_aes_verifyMic" (DevAddr 260413AE,
  NwkSKey 99D58493...), also in the Rust lorawan crate's tests as "lora_2".
- RFC 4493 §4 AES-CMAC examples (the MIC primitive of LoRaWAN 1.0.3 §4.4).
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.lora import lorawan
from drivers.lora.lorawan import LorawanError, MType

KIRBY_NWK = bytes.fromhex("44024241ed4ce9a68c6a8bc055233fd3")
KIRBY_APP = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc588")


def test_rfc4493_cmac_examples() -> None:
    # RFC 4493 §4, examples 1 and 2 (key 2b7e1516...).
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    for msg, tag in ((b"", "bb1d6929e95937287fa37d129b756746"),
                     (bytes.fromhex("6bc1bee22e409f96e93d7e117393172a"),
                      "070a16b46b4d4144f79bdd9dd04a287c")):
        c = CMAC(algorithms.AES(key))
        c.update(msg)
        assert c.finalize().hex() == tag


def test_kirby_parse_mic_and_decrypt() -> None:
    # lora-packet test_parse.js "should parse packet", test_mic.js, test_decrypt.js.
    phy = bytes.fromhex("40F17DBE4900020001954378762B11FF0D")
    f = lorawan.parse_data_frame(phy)
    assert f.mtype is MType.UNCONFIRMED_UP
    assert f.uplink
    assert not f.confirmed
    assert f.dev_addr_hex == "49BE7DF1"
    assert (f.fctrl, f.fcnt16, f.fopts, f.fport) == (0, 2, b"", 1)
    assert f.frm_payload.hex() == "95437876"
    assert f.mic.hex() == "2b11ff0d"
    assert lorawan.compute_mic(KIRBY_NWK, f.signed, dev_addr=f.dev_addr, fcnt=2).hex() == \
        "2b11ff0d"
    assert lorawan.verify_mic(f, KIRBY_NWK, 2)
    assert lorawan.crypt_frm_payload(KIRBY_APP, f.frm_payload, dev_addr=f.dev_addr,
                                     fcnt=2) == b"test"


def test_kirby_empty_payload_and_bad_mic() -> None:
    # lora-packet test_mic.js: "2a3518af" valid, "...aa" is the bodged MIC.
    good = lorawan.parse_data_frame(bytes.fromhex("40F17DBE49000300012A3518AF"))
    assert good.fport == 1
    assert good.frm_payload == b""
    assert lorawan.verify_mic(good, KIRBY_NWK, 3)
    bad = lorawan.parse_data_frame(bytes.fromhex("40F17DBE49000300012A3518AA"))
    assert not lorawan.verify_mic(bad, KIRBY_NWK, 3)


def test_kirby_large_payload() -> None:
    # lora-packet test_decrypt.js "should decrypt large payload" (3 AES blocks).
    phy = bytes.fromhex("40f17dbe490004000155332de41a11adc072553544429ce7787707d1c316e027e7"
                        "e5e334263376affb8aa17ad30075293f28dea8a20af3c5e7")
    f = lorawan.parse_data_frame(phy)
    assert f.fcnt16 == 4
    assert f.mic.hex() == "0af3c5e7"
    assert lorawan.verify_mic(f, KIRBY_NWK, 4)
    assert lorawan.crypt_frm_payload(KIRBY_APP, f.frm_payload, dev_addr=f.dev_addr, fcnt=4) \
        == b"The quick brown fox jumps over the lazy dog."


def test_kirby_wrong_key_and_flipped_bit() -> None:
    # lora-packet test_decrypt.js "bad key scrambles payload", "bad data lightly scrambles".
    f = lorawan.parse_data_frame(bytes.fromhex("40F17DBE4900020001954378762B11FF0D"))
    wrong = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc580")
    assert lorawan.crypt_frm_payload(wrong, f.frm_payload, dev_addr=f.dev_addr,
                                     fcnt=2).hex() == "5999fc3f"
    g = lorawan.parse_data_frame(bytes.fromhex("40F17DBE4900020001954478762B11FF0D"))
    assert lorawan.crypt_frm_payload(KIRBY_APP, g.frm_payload, dev_addr=g.dev_addr,
                                     fcnt=2) == b"tbst"
    assert not lorawan.verify_mic(g, KIRBY_NWK, 2)


def test_kirby_downlink_ack_mic() -> None:
    # lora-packet test_mic.js "for ACK": an unconfirmed downlink, Dir = 1 in B0.
    f = lorawan.parse_data_frame(bytes.fromhex("60f17dbe4920020001f9d65d27"))
    assert f.mtype is MType.UNCONFIRMED_DOWN
    assert not f.uplink
    assert f.ack
    assert lorawan.verify_mic(f, KIRBY_NWK, 2)


def test_kirby_fopts() -> None:
    # lora-packet test_fopts.js (github issue #18): FOptsLen 3, FOpts 091103.
    f = lorawan.parse_data_frame(bytes.fromhex("4084412505A3010009110308B33750F504D4B86A"))
    assert f.fopts.hex() == "091103"
    assert (f.fport, f.fcnt16, f.adr, f.ack) == (8, 1, True, True)
    assert f.frm_payload.hex() == "b33750f5"


def test_brocaar_data_uplink() -> None:
    # brocaar/lorawan phypayload_test.go TestPHYPayloadData: ADR set, "hello".
    f = lorawan.parse_data_frame(base64.b64decode("QAQDAgGAAQABppRkJhXWw7WC"))
    assert (f.dev_addr, f.fcnt16, f.fport, f.adr) == (0x01020304, 1, 1, True)
    assert lorawan.verify_mic(f, bytes([2] * 16), 1)
    assert lorawan.crypt_frm_payload(bytes([1] * 16), f.frm_payload, dev_addr=f.dev_addr,
                                     fcnt=1) == b"hello"


def test_brocaar_build_confirmed_uplink() -> None:
    # brocaar/lorawan ExampleNewPHYPayload: exact bytes of a built, encrypted, signed frame.
    phy = lorawan.build_data_frame(dev_addr=0x01020304, fcnt=0, nwk_skey=bytes(range(1, 17)),
                                   app_skey=bytes(range(16, 0, -1)), fport=10,
                                   payload=bytes([1, 2, 3, 4]), confirmed=True)
    assert list(phy) == [128, 4, 3, 2, 1, 0, 0, 0, 10, 226, 100, 212, 247, 181, 106, 14, 117]


def test_lmic_verify_mic_vector() -> None:
    # LMIC unit test test_aes_verifyMic / Rust lorawan "lora_2": DevAddr 260413AE, FCnt 0.
    f = lorawan.parse_data_frame(bytes.fromhex("40AE130426800000016F895D98810714E3268295"))
    assert f.dev_addr_hex == "260413AE"
    assert lorawan.verify_mic(f, bytes.fromhex("99D58493D1205B43EFF938F0F66C339E"), 0)
    app = bytes.fromhex("0A501524F8EA5FCBF9BDB5AD7D126F75")
    assert lorawan.crypt_frm_payload(app, f.frm_payload, dev_addr=f.dev_addr,
                                     fcnt=0) == b"abcdefg"


def test_mic_covers_the_upper_fcnt_bits() -> None:
    # LoRaWAN 1.0.3 §4.4: B0 carries the 32-bit FCntUp although only 16 bits are sent.
    key = bytes(range(16))
    phy = lorawan.build_data_frame(dev_addr=0x26000001, fcnt=0x0001_0005, nwk_skey=key,
                                   app_skey=key, fport=1, payload=b"x")
    f = lorawan.parse_data_frame(phy)
    assert f.fcnt16 == 5
    assert lorawan.verify_mic(f, key, 0x0001_0005)
    assert not lorawan.verify_mic(f, key, 5)


@pytest.mark.parametrize(("phy", "counter"), [
    (b"", "malformed"),
    (bytes.fromhex("40F17DBE49000200"), "malformed"),
    (bytes.fromhex("400102030405000011223344"), "malformed"),  # FOptsLen 5 with no room
    (bytes.fromhex("41F17DBE4900020001954378762B11FF0D"), "bad_major"),
    (bytes.fromhex("0039363463336913AA05693574323831330489C65B1304"), "not_data"),  # join req
    (bytes.fromhex("E0F17DBE4900020001954378762B11FF0D"), "not_data"),  # proprietary
    (bytes.fromhex("40F17DBE4901020009000000000000"), "malformed"),  # FOpts with FPort 0
    (bytes.fromhex("40F17DBE49000200") + bytes(300), "malformed"),  # longer than LoRa allows
])
def test_rejected_frames(phy: bytes, counter: str) -> None:
    with pytest.raises(LorawanError) as err:
        lorawan.parse_data_frame(phy)
    assert err.value.counter == counter


@pytest.mark.parametrize(("last", "fcnt16", "expected"), [
    (None, 0, 0),
    (None, 7, 7),
    (0, 1, 1),
    (5, 5, None),  # the same counter again: replay
    (5, 4, None),  # older: replay
    (100, 100 + 16384, 100 + 16384),  # exactly MAX_FCNT_GAP ahead
    (100, 100 + 16385, None),  # further: dropped (§4.3.1.5)
    (0xFFFE, 0xFFFF, 0xFFFF),
    (0xFFFF, 0x0000, 0x1_0000),  # roll-over of the 16 bits on air
    (0xFFFF, 0x0002, 0x1_0002),
    (0x1_FFF0, 0x0010, 0x2_0010),
    (0xFFFF_FFFF, 0x0000, None),  # the 32-bit counter is exhausted
])
def test_fcnt_ahead(last: int | None, fcnt16: int, expected: int | None) -> None:
    assert lorawan.fcnt_ahead(last, fcnt16) == expected


@pytest.mark.parametrize(("last", "fcnt16", "expected"), [
    (5, 5, 5), (5, 4, 4), (0x1_0002, 0xFFFF, 0xFFFF), (3, 10, None), (0x2_0005, 0x0006, 0x1_0006),
])
def test_fcnt_behind(last: int, fcnt16: int, expected: int | None) -> None:
    assert lorawan.fcnt_behind(last, fcnt16) == expected


@settings(max_examples=200, deadline=None)
@given(dev_addr=st.integers(0, 0xFFFF_FFFF), fcnt=st.integers(0, 0xFFFF_FFFF),
       fport=st.integers(1, 223), payload=st.binary(max_size=64),
       fopts=st.binary(max_size=15), confirmed=st.booleans(),
       nwk=st.binary(min_size=16, max_size=16), app=st.binary(min_size=16, max_size=16))
def test_build_parse_roundtrip(dev_addr: int, fcnt: int, fport: int, payload: bytes,
                               fopts: bytes, confirmed: bool, nwk: bytes, app: bytes) -> None:
    phy = lorawan.build_data_frame(dev_addr=dev_addr, fcnt=fcnt, nwk_skey=nwk, app_skey=app,
                                   fport=fport, payload=payload, confirmed=confirmed,
                                   fopts=fopts)
    f = lorawan.parse_data_frame(phy)
    assert (f.dev_addr, f.fcnt16, f.fport, f.fopts, f.confirmed) == \
        (dev_addr, fcnt & 0xFFFF, fport, fopts, confirmed)
    assert lorawan.verify_mic(f, nwk, fcnt)
    assert lorawan.crypt_frm_payload(app, f.frm_payload, dev_addr=dev_addr, fcnt=fcnt) == payload


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(phy: bytes) -> None:
    try:
        f = lorawan.parse_data_frame(phy)
    except LorawanError:
        return
    assert len(f.mic) == 4
    lorawan.verify_mic(f, bytes(16), f.fcnt16)
