"""``streetgate run --once`` and ``--test DURATION``: the configured drivers without the daemon.

Each driver runs with a standalone context (state in memory) and a recording sink, so nothing
is written to the state directory or the buffer and nothing goes to the broker. ``--once``
stops when every driver has emitted and tried each device it knows, or at the timeout;
``--test`` runs them for the given time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

from drivers.api import DriverContext, Quality, Reading
from drivers.testing import RecordingSink

if TYPE_CHECKING:
    from drivers.registry import Registry
    from gateway.config import Config

__all__ = ["DriverRun", "dry_run", "failed", "render_json", "render_table", "run_command",
           "shown"]

#: How long a cancelled driver may take to stop before it is reported.
STOP_TIMEOUT = 5.0


@dataclasses.dataclass
class DriverRun:
    """One configured driver instance during a dry run."""

    driver: str
    instance: str
    context: DriverContext
    sink: RecordingSink = dataclasses.field(default_factory=RecordingSink)
    task: asyncio.Task[None] | None = None
    error: str | None = None

    def round_done(self) -> bool:
        """It emitted, and every device it knows has succeeded or failed at least once."""
        if self.task is None or self.task.done():
            return True
        devices = self.context.health.devices.values()
        return bool(self.sink.readings) and all(d.counters for d in devices)

    def failing(self) -> dict[str, str]:
        """Devices failing now: name -> last error."""
        return {n: d.last_error or "failing" for n, d in self.context.health.devices.items()
                if not d.ok}

    def problems(self, readings: list[Reading]) -> list[str]:
        out = [self.error] if self.error else []
        if not self.sink.readings and not self.error:
            out.append("no readings")
        out += [f"{n}: {why}" for n, why in sorted(self.failing().items())]
        bad = sum(1 for r in readings if r.quality != Quality.GOOD)
        if bad and not self.failing():
            out.append(f"{bad} reading(s) of bad quality")
        return out


async def dry_run(cfg: Config, registry: Registry, *, duration: float | None,
                  timeout: float) -> list[DriverRun]:
    """Run every driver of ``cfg`` for one round (``duration`` None) or ``duration`` s."""
    runs = [_start(registry, d.driver, d.instance, d.config) for d in cfg.drivers]
    loop = asyncio.get_running_loop()
    end = loop.time() + (timeout if duration is None else duration)
    while loop.time() < end:
        if duration is None and all(r.round_done() for r in runs):
            break
        if all(r.task is None or r.task.done() for r in runs):
            break
        await asyncio.sleep(0.05)
    for r in runs:
        if duration is None and r.task is not None and not r.round_done():
            r.error = f"no complete round within {timeout:g}s"
    await _stop(runs)
    return runs


def _start(registry: Registry, driver: str, instance: str, config: Any) -> DriverRun:
    run = DriverRun(driver, instance, DriverContext.standalone(instance, driver))
    cls = registry.get(driver)
    if cls is None:  # the config was validated against this registry: only a race gets here
        run.error = f"driver {driver} is not available"
        return run
    try:
        task = cls(config, run.context).run(run.sink)
    except Exception as exc:  # noqa: BLE001 - one driver that cannot start must not hide the others
        run.error = f"cannot start: {type(exc).__name__}: {exc}"
        return run
    run.task = asyncio.create_task(task, name=f"streetgate[{driver}:{instance}].dry-run")
    return run


async def _stop(runs: list[DriverRun]) -> None:
    tasks = [r.task for r in runs if r.task is not None]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    for r in runs:
        task = r.task
        if task is None:
            continue
        if not task.done():
            r.error = f"did not stop within {STOP_TIMEOUT:g}s of being cancelled"
        elif not task.cancelled() and (exc := task.exception()) is not None:
            r.error = f"run() failed: {type(exc).__name__}: {exc}"


def shown(run: DriverRun, *, once: bool) -> list[Reading]:
    """Once: the latest reading of each point, in the order points first appeared."""
    if not once:
        return list(run.sink.readings)
    latest: dict[str, Reading] = {}
    for r in run.sink.readings:
        latest[r.point] = r
    return list(latest.values())


def failed(runs: list[DriverRun], *, once: bool) -> bool:
    return any(r.problems(shown(r, once=once)) for r in runs)


def _value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def render_json(runs: list[DriverRun], *, once: bool) -> str:
    readings = [{"point": r.point, "ts": r.ts, "value": _value(r.value), "unit": r.unit,
                 "quality": Quality(r.quality).name.lower()}
                for run in runs for r in shown(run, once=once)]
    drivers = [{"driver": r.driver, "instance": r.instance,
                "ok": not r.problems(shown(r, once=once)), "readings": len(shown(r, once=once)),
                "problems": r.problems(shown(r, once=once)),
                "devices": {n: d.snapshot() for n, d in r.context.health.devices.items()}}
               for r in runs]
    return json.dumps({"ok": not failed(runs, once=once), "drivers": drivers,
                       "readings": readings})


def render_table(runs: list[DriverRun], *, once: bool) -> str:
    rows = [("POINT", "VALUE", "UNIT", "QUALITY")]
    for run in runs:
        rows += [(r.point, _text(r.value), r.unit or "", Quality(r.quality).name.lower())
                 for r in shown(run, once=once)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{p:<{widths[0]}}  {v:>{widths[1]}}  {u:<{widths[2]}}  {q}".rstrip()
             for p, v, u, q in rows]
    lines.append("")
    for run in runs:
        problems = run.problems(shown(run, once=once))
        head = f"{run.driver}:{run.instance}"
        devices = len(run.context.health.devices)
        state = "FAILED: " + "; ".join(problems) if problems else "ok"
        count = (f"{len(shown(run, once=True))} point(s)" if once
                 else f"{len(run.sink.readings)} reading(s)")
        lines.append(f"{head:<24} {devices} device(s), {count}: {state}")
    return "\n".join(lines) + "\n"


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def run_command(cfg: Config, registry: Registry, *, duration: float | None, timeout: float,
                as_json: bool) -> tuple[str, bool]:
    """The output of ``run --once``/``--test`` and whether every device answered well."""
    runs = asyncio.run(dry_run(cfg, registry, duration=duration, timeout=timeout))
    once = duration is None
    out = render_json(runs, once=once) + "\n" if as_json else render_table(runs, once=once)
    return out, not failed(runs, once=once)
