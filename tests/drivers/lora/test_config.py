"""Config schemas, the example, the README, and keys kept secret."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.api import ConfigError, dump
from drivers.lora import LoraForwarderDriver, LoraModemDriver
from drivers.lora.sim import demo_devices

PKG = Path(__file__).resolve().parents[3] / "drivers" / "lora"
KEY = "0DC6919BB44AEF3D0F146A303F9BE306"


def example() -> dict[str, Any]:
    with (PKG / "example.toml").open("rb") as f:
        return tomllib.load(f)


def parse(cls: Any, table: dict[str, Any]) -> Any:
    return cls.parse_config(table, file="gateway.toml", path="drivers.x[0]")


def test_example_validates() -> None:
    data = example()
    for name, cls in (("lora_forwarder", LoraForwarderDriver), ("lora_modem", LoraModemDriver)):
        assert cls.name == name
        for raw in data["drivers"][name]:
            table = dict(raw)
            assert isinstance(table.pop("instance"), str)
            parse(cls, table)


def test_readme_includes_example_verbatim() -> None:
    readme = (PKG / "README.md").read_text()
    text = (PKG / "example.toml").read_text()
    assert f"```toml\n{text}```" in readme
    assert readme.rstrip().split("\n## ")[-1].startswith("Troubleshooting")


def test_example_devices_are_the_simulator_demo_devices() -> None:
    # So `streetgate sim lora-forwarder` without --config talks to the example config.
    assert example()["drivers"]["lora_forwarder"][0]["devices"] == demo_devices()


def test_secrets_are_masked_and_not_in_repr(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse(LoraForwarderDriver, {"devices": [
        {"name": "m", "dev_addr": "26000001", "nwk_skey": KEY, "app_skey": KEY.lower()}]})
    dumped = dump(cfg)
    assert dumped["devices"][0]["nwk_skey"] == dumped["devices"][0]["app_skey"] == "********"
    assert KEY not in repr(cfg)
    assert KEY.lower() not in repr(cfg)
    assert dump(cfg, mask=False)["devices"][0]["nwk_skey"] == KEY
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("config %r", cfg)
    assert KEY not in caplog.text


def issues(cls: Any, table: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(cls, table)
    return err.value.lines()


def test_bad_keys_are_reported_without_their_value() -> None:
    secret = "0DC6919BB44AEF3D0F146A303F9BE30"  # noqa: S105 - a test key, one digit short
    lines = issues(LoraForwarderDriver, {"devices": [
        {"name": "m", "dev_addr": "2600001", "nwk_skey": secret, "app_skey": "zz" * 16}]})
    assert lines == [
        ("gateway.toml: drivers.x[0].devices[0].app_skey: expected 32 hex digits; got a value "
        "of 32 characters"),
        'gateway.toml: drivers.x[0].devices[0].dev_addr: expected 8 hex digits; got "2600001"',
        ("gateway.toml: drivers.x[0].devices[0].nwk_skey: expected 32 hex digits; got a value "
        "of 31 characters"),
    ]
    assert not any(secret in line for line in lines)


def test_device_rules() -> None:
    fields = [{"name": "rssi", "offset": 0, "type": "u8"},
              {"name": "x", "offset": 0, "type": "u8"},
              {"name": "x", "offset": 1, "type": "u8"}]
    broken = [{"name": "y", "offset": 1, "type": "u8", "bit": 3},
              {"name": "t", "offset": 0, "type": "bool"}]
    text = "\n".join(issues(LoraForwarderDriver, {"devices": [
        {"name": "a", "dev_addr": "26000001", "nwk_skey": KEY, "app_skey": KEY,
         "decoder": "struct"},
        {"name": "b", "decoder": "cayenne", "fields": [{"name": "t", "offset": 0,
                                                        "type": "u8"}]},
        {"name": "c", "decoder": "struct", "fields": fields},
        {"name": "d", "decoder": "struct", "fields": broken},
    ]}))
    for expected in ("devices[0].fields: decoder struct needs at least one field",
                     "devices[1].fields: fields are only read by decoder struct",
                     'devices[2].fields: field name "rssi" is reserved',
                     'devices[2].fields: field name "x" is used twice',
                     "devices[3].fields[0].bit: only type bool takes a bit; type is u8",
                     "devices[3].fields[1].bit: missing required key for type bool"):
        assert expected in text


def test_instance_rules() -> None:
    dev = {"name": "a", "dev_addr": "26000001", "nwk_skey": KEY, "app_skey": KEY}
    text = "\n".join(issues(LoraForwarderDriver, {"gateways": ["XYZ"], "devices": [
        dev, dev, {"name": "b"}]}))
    for expected in ('gateways[0]: expected 16 hex digits; got "XYZ"',
                     'devices[1].name: device name "a" is used twice',
                     'devices[1].dev_addr: DevAddr "26000001" is used twice',
                     "devices[2].dev_addr: missing required key; expected 8 hex digits",
                     "devices[2].nwk_skey: missing required key; expected 32 hex digits"):
        assert expected in text


def test_modem_raw_payload_devices_need_match() -> None:
    ok = parse(LoraModemDriver, {"port": "/dev/ttyUSB0", "payload": "raw",
                                 "devices": [{"name": "only"}]})
    assert ok.devices[0].nwk_skey is None
    text = "\n".join(issues(LoraModemDriver, {
        "port": "/dev/ttyUSB0", "payload": "raw", "reopen_min": "5s", "reopen_max": "1s",
        "devices": [{"name": "a", "match": "A1"}, {"name": "b"}, {"name": "c"}]}))
    assert "devices[1].match: missing required key with more than one raw device" in text
    assert "reopen_max: expected at least reopen_min (5s); got 1s" in text
    odd = "\n".join(issues(LoraModemDriver, {"port": "/dev/ttyUSB0", "payload": "raw",
                                             "devices": [{"name": "c", "match": "F"}]}))
    assert 'devices[0].match: expected an even number of hex digits; got "F"' in odd


def test_modem_lorawan_devices_need_sessions() -> None:
    text = "\n".join(issues(LoraModemDriver, {"port": "/dev/ttyUSB0",
                                              "devices": [{"name": "a"}]}))
    assert "devices[0].dev_addr: missing required key" in text


def test_streetgate_check_masks_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main  # noqa: PLC0415

    gateway = f'[gateway]\nid = "cab-1"\nstate_dir = "{tmp_path / "state"}"\n\n'
    path = tmp_path / "gateway.toml"
    path.write_text(gateway + (PKG / "example.toml").read_text())
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK (2 driver instance(s))" in out
    assert out.count('nwk_skey = "********"') == 3
    for dev in example()["drivers"]["lora_forwarder"][0]["devices"]:
        assert dev["nwk_skey"] not in out
        assert dev["app_skey"] not in out


def test_rcvbuf_is_a_byte_size_within_bounds() -> None:
    assert parse(LoraForwarderDriver, {}).rcvbuf is None
    assert parse(LoraForwarderDriver, {"rcvbuf": "4MiB"}).rcvbuf == 4 * 1024 * 1024
    assert parse(LoraForwarderDriver, {"rcvbuf": 65536}).rcvbuf == 65536
    assert issues(LoraForwarderDriver, {"rcvbuf": "1kB"}) == [
        "gateway.toml: drivers.x[0].rcvbuf: expected at least 4096; got 1000"]
    assert issues(LoraForwarderDriver, {"rcvbuf": "2GiB"}) == [
        "gateway.toml: drivers.x[0].rcvbuf: expected at most 1073741824; got 2147483648"]
    assert issues(LoraForwarderDriver, {"rcvbuf": "lots"})[0].endswith(
        'expected a size such as 1048576, "512KiB", "64MiB", "1GB"; got "lots"')
