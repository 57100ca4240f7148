"""A driver package installed while the daemon runs is found by the next reload (SIGHUP), as
`streetgate check` finds it, instead of being refused as an unknown driver."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

from gateway.broker import Mosquitto
from gateway.config import load_config
from gateway.cose import kid_for
from gateway.daemon import Gateway
from ingest.subscriber import BatchSubscriber
from ingest.verify import Verifier
from provisioning.keys import load_or_create_signing_key
from tests.helpers.e2e import Run

_DRIVER = '''
from dataclasses import dataclass
from drivers.api import Driver, Duration, Poller, Reading, option

@dataclass(frozen=True, kw_only=True)
class TickConfig:
    interval: Duration = option(Duration(0.05))

class TickDriver(Driver[TickConfig]):
    name = "late_tick"
    config_schema = TickConfig

    async def run(self, sink):
        n = 0
        async for _ in Poller(self.config.interval):
            n += 1
            sink.emit([Reading(f"{self.context.instance}/dev/n", sink.now_ms(), n)])
'''


def test_a_driver_installed_while_running_is_found_on_reload(tmp_path: Path,
                                                            mosquitto: Mosquitto) -> None:
    conf = tmp_path / "gateway.toml"
    head = (f'[gateway]\nid = "cab-late"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[uplink]\nport = {mosquitto.port}\nbatch_linger = "50ms"\n')
    conf.write_text(head + '[[drivers.sim]]\ninstance = "a"\ninterval = "50ms"\n')
    site = tmp_path / "site"  # where pip would put the new package
    site.mkdir()

    async def scenario() -> None:
        cfg = load_config(conf)
        key = load_or_create_signing_key(cfg.gateway.path(cfg.gateway.signing_key))
        sub = BatchSubscriber(mosquitto.host, mosquitto.port, "streetgate/+/batch")
        sub.start()
        gw = Gateway(cfg)
        task = asyncio.create_task(gw.run())
        await gw.ready.wait()
        run = Run(gw, Verifier({kid_for(key.public_key()): key.public_key()}), sub, task)
        sys.path.append(str(site))
        try:
            (site / "late_tick.py").write_text(textwrap.dedent(_DRIVER))
            dist = site / "late_tick-0.1.dist-info"
            dist.mkdir()
            (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: late-tick\n"
                                           "Version: 0.1\n")
            (dist / "entry_points.txt").write_text(
                "[streetgate.drivers]\nlate_tick = late_tick:TickDriver\n")
            conf.write_text(head + '[[drivers.late_tick]]\ninstance = "t"\n')
            assert await gw.reload(conf)
            await run.collect_until(lambda rs: any(r.point == "t/dev/n" for r in rs))
        finally:
            gw.stop()
            await task
            sub.stop()
            sys.path.remove(str(site))
            sys.modules.pop("late_tick", None)

    asyncio.run(scenario())
