"""LoRa: replayed and forged uplinks are rejected. The suite sends, as the packet forwarder
would, genuine frames with counters already used and frames with a broken or foreign MIC;
none may reach the platform, and the driver's health counts each one."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
import time
from collections.abc import Callable
from functools import partial

from drivers.lora import gwmp
from drivers.lora.config import DeviceConfig, ForwarderConfig
from drivers.lora.sim import uplink_for
from hil_tests._bench import Bench
from hil_tests._observe import Observer
from hil_tests.rig import Bus, Rig

#: Gateway EUI of the injected datagrams when the driver accepts any forwarder.
INJECTOR_EUI = "AA555A00000000FE"


def _push(phy: bytes, eui: str, token: int) -> bytes:
    packet = gwmp.RxPacket(data=phy, freq=868.1, datr="SF7BW125", codr="4/5", rssi=-90,
                           lsnr=7.0, tmst=int(time.time() * 1e6) & 0xFFFF_FFFF, chan=0, rfch=0,
                           modu="LORA")
    return gwmp.build_push_data(token, eui, {"rxpk": [gwmp.rxpk_json(packet)]})


def _replays(dev: DeviceConfig, last: int) -> list[bytes]:
    """The last accepted frame again and, when there is one, an older one (counter above 0:
    a device with ``fcnt_check = "relaxed"`` takes counter 0 as a restart, by design)."""
    return [uplink_for(dev, last)] + ([uplink_for(dev, last - 2)] if last >= 3 else [])


def _forgeries(dev: DeviceConfig, fcnt: int) -> list[bytes]:
    """A frame with a flipped MIC byte, and one signed with a key the attacker made up."""
    genuine = uplink_for(dev, fcnt)
    stranger = dataclasses.replace(dev, nwk_skey=secrets.token_hex(16))
    return [genuine[:-1] + bytes([genuine[-1] ^ 0x5A]), uplink_for(stranger, fcnt + 1)]


def _target(rig: Rig, cfg: ForwarderConfig) -> tuple[str, int]:
    host = rig.gateway.host if rig.remote and rig.gateway.host else cfg.host
    if host in ("0.0.0.0", ""):  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    return host, cfg.port


def _counters(bench: Bench, inst: str, dev: str) -> dict[str, int]:
    c = bench.obs.health(inst, dev)
    return {"mic": c.get("mic_errors", 0), "replay": c.get("replays", 0) + c.get("duplicates", 0)}


def _has(obs: Observer, point: str) -> bool:
    return bool(obs.of(point))


def _in_status(obs: Observer, inst: str, dev: str) -> bool:
    return bool(obs.health(inst, dev))


def _counted(bench: Bench, inst: str, dev: str, want: dict[str, int]) -> bool:
    now = _counters(bench, inst, dev)
    return now["mic"] >= want["mic"] and now["replay"] >= want["replay"]


def test_replayed_and_forged_frames_are_rejected(lora_bus: Bus, up: Bench, rig: Rig,
                                                 report: Callable[[str], None]) -> None:
    obs, inst = up.obs, lora_bus.instance
    cfg: ForwarderConfig = up.drivers[inst].config
    devices = [d for d in cfg.devices if d.dev_addr and d.nwk_skey and d.app_skey]
    assert devices, f"{inst} has no LoRaWAN devices with keys to test with"
    # Forged counters stay within max_fcnt_gap, so only the MIC can refuse them.
    assert cfg.max_fcnt_gap > 51
    timeout = float(rig.recover_timeout)
    last: dict[str, int] = {}
    for dev in devices:
        point = f"{inst}/{dev.name}/fcnt"
        obs.wait(partial(_has, obs, point), timeout, f"a frame counter from {dev.name}")
        obs.wait(partial(_in_status, obs, inst, dev.name), timeout, f"{dev.name} in status")
        last[dev.name] = max(int(r.value) for r in obs.of(point) if isinstance(r.value, int))
    want = {d.name: _counters(up, inst, d.name) for d in devices}
    t0, sent = time.monotonic(), {"replay": 0, "mic": 0}
    eui = cfg.gateways[0] if cfg.gateways else INJECTOR_EUI
    forged: dict[str, set[int]] = {}
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        for i, dev in enumerate(devices):
            n = last[dev.name]
            replays, forgeries = _replays(dev, n), _forgeries(dev, n + 50)
            forged[dev.name] = {n + 50, n + 51}
            want[dev.name]["replay"] += len(replays)
            want[dev.name]["mic"] += len(forgeries)
            sent["replay"] += len(replays)
            sent["mic"] += len(forgeries)
            for j, phy in enumerate(replays + forgeries):
                sock.sendto(_push(phy, eui, 0x4000 + 8 * i + j), _target(rig, cfg))
    for dev in devices:
        obs.wait(partial(_counted, up, inst, dev.name, want[dev.name]), timeout,
                 f"{dev.name}: every injected replay and forgery counted in health")
    time.sleep(0.5)
    for dev in devices:
        counters = [int(r.value) for r in obs.of(f"{inst}/{dev.name}/fcnt")
                    if isinstance(r.value, int)]
        assert counters == sorted(set(counters)), f"{dev.name}: a frame counter came twice"
        sneaked = forged[dev.name] & set(counters)
        assert not sneaked, f"{dev.name}: forged frame {sorted(sneaked)} reached the platform"
    report(f"{sent['replay'] + sent['mic']} frames injected into {inst} ({sent['replay']} "
           f"replays, {sent['mic']} forgeries): all counted in health, none reached the "
           f"platform ({time.monotonic() - t0:.1f}s)")
