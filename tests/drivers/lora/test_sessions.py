"""The packet-to-readings pipeline with random frames aimed at a configured device."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.api import DriverContext
from drivers.lora.sessions import Radio, Receiver
from drivers.lora.sim import demo_devices, parse_devices, uplink_for

TABLES = demo_devices(2, random_keys=True)
DEVICES = parse_devices(TABLES)


def receiver() -> Receiver:
    ctx = DriverContext.standalone("lora", "lora_forwarder")
    return Receiver("lora", DEVICES, state=ctx.state, health=ctx.health, logger=ctx.logger)


@settings(max_examples=300, deadline=None)
@given(mhdr=st.sampled_from([0x40, 0x80, 0x60, 0x00, 0xE0, 0x41]),
       tail=st.binary(max_size=60), which=st.integers(0, 1))
def test_random_frames_for_a_known_devaddr_never_crash(mhdr: int, tail: bytes,
                                                       which: int) -> None:
    dev_addr = bytes.fromhex(DEVICES[which].dev_addr or "")[::-1]
    rx = receiver()

    async def go() -> None:
        outcome = await rx.lorawan(bytes([mhdr]) + dev_addr + tail, Radio(-90, 1.5), 1)
        assert outcome.readings == []  # a forged MIC passes once in 2**32 tries
        assert outcome.status != "ok"
        good = await rx.lorawan(uplink_for(DEVICES[which], 3), Radio(), 2)
        assert good.status == "ok"
        assert good.fcnt == 3
    asyncio.run(go())


def test_keys_never_show_in_reprs() -> None:
    rx = receiver()
    text = repr(rx.devices) + repr(DEVICES)
    for table in TABLES:
        assert table["nwk_skey"] not in text
        assert table["app_skey"] not in text
