"""The daemon: drivers → buffer → signed batches → uplink, on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from buffer.store import DriverState, Lease, Store, StoreError
from buffer.types import Row
from drivers.api import Backoff, Driver, DriverContext, HealthBoard, Quality, Reading
from drivers.registry import Registry, load_registry
from gateway import __version__
from gateway._wire import Unchanged
from gateway.batch import encode_batch
from gateway.clock import K_CLOCK, ClockTracker, boot_id
from gateway.command import K_RESULTS
from gateway.config import Config, ConfigError, DriverInstance, load_config
from gateway.cose import kid_for, sign1
from gateway.logs import flush_suppressed
from gateway.notify import Liveness, Notifier, uplink_probe, watchdog_loop, worker_probe
from gateway.report import ReportFilter
from gateway.status import (
    StatusReporter,
    build_status,
    status_path,
    uplink_view,
    write_status_file,
)
from gateway.uplink import TlsFiles, Uplink
from provisioning.keys import (
    KeyFileError,
    KeyPermissionError,
    load_or_create_signing_key,
    load_signing_key,
)

if TYPE_CHECKING:
    from gateway.commander import Commander

__all__ = ["Gateway"]

_log = logging.getLogger("streetgate")
T = TypeVar("T")


class _Sink:
    """What drivers emit into: a thread-safe in-memory queue of the store, never blocking."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw

    def emit(self, readings: Iterable[Reading]) -> None:
        self._gw.emit(readings)

    def now_ms(self) -> int:
        return self._gw.clock.now_ms()

    def backlog(self) -> int:
        store = self._gw.store
        return store.pending() if store is not None else 0


class Gateway:
    """One running gateway. ``await run()`` until ``stop()``; then it drains and returns 0."""

    def __init__(self, cfg: Config, *, registry: Registry | None = None,
                 drain_timeout: float = 5.0) -> None:
        self.cfg = cfg
        self.registry = registry or load_registry()
        self._rescan = registry is None  # a registry handed in (tests) stays as it is
        self.drain_timeout = drain_timeout
        self._drain_from: int | None = None  # store.delivered when the drain began
        self.boot_id = uuid.uuid4().hex
        self.started = time.time()
        self.store: Store | None = None
        self.uplink: Uplink | None = None
        self.drivers: dict[str, tuple[Driver[Any], HealthBoard]] = {}
        self.commander: Commander | None = None
        #: Report by exception ([[report]] rules); empty: every reading is sent.
        self.report = ReportFilter(cfg.report)
        self._riding_unchanged: Unchanged | None = None
        #: The config file's path, for config sent by command (set by ``streetgate run``).
        self.config_path: str | Path | None = None
        self._results_flying: set[str] = set()
        self._riding: tuple[str, ...] = ()  # store thread: results the batch being built has
        self._riding_results: list[bytes] = []
        self.counters = {"produced": 0, "delivered": 0, "batches": 0, "split": 0}
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streetgate-store")
        self._stop = asyncio.Event()
        self._new_data = asyncio.Event()
        self._commit_now = asyncio.Event()
        self._batch_limit = cfg.uplink.batch_max_readings
        self._key: Any = None
        self._kid = b""
        self.ready = asyncio.Event()
        self._tasks: dict[str, tuple[asyncio.Task[None], DriverInstance]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        self._forward_task: asyncio.Task[None] | None = None
        self.reloads = {"ok": 0, "rejected": 0}
        self.reload_error: str | None = None  # why the last reload was refused, until one works
        self.commit_error: str | None = None
        self._reload_lock = asyncio.Lock()
        self.notifier = Notifier()
        self.liveness = Liveness()
        self.clock = ClockTracker()  # replaced by one with saved state once the buffer is open
        self._seq_base = 1  # seq of the first reading appended by this process
        self._stats: Any = None  # StoreStats, refreshed off the loop by the status reporter
        self.reporter = StatusReporter(
            self._status_doc, publish=self._publish_status,
            path=status_path(cfg.gateway.status_socket, state_dir=cfg.gateway.state_dir),
            interval=float(cfg.uplink.status_interval), on_summary=self.notifier.status)
        self._lock: int | None = None

    # -- driver side -------------------------------------------------------------------------
    def emit(self, readings: Iterable[Reading]) -> None:
        batch = readings if isinstance(readings, list) else list(readings)
        if not batch or self.store is None:
            return
        if self.report:
            # Held-back readings are "unchanged", not produced: they take no seq.
            batch = self.report.filter(batch)
            self.counters["unchanged"] = self.report.held
            if not batch:
                return
        self.store.append(batch)
        self.counters["produced"] += len(batch)
        if self.store.pending() >= self.cfg.buffer.commit_rows:
            self._commit_now.set()

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def stop_drivers(self) -> None:
        """Stop producing (demo, bench, reload); the pipeline keeps draining the buffer."""
        tasks = [t for t, _ in self._tasks.values()]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.report and self.store is not None:
            # Each point's last held-back reading goes out: the platform ends on what the
            # devices last said, and the "unchanged" records before it ride along.
            last = self.report.flush()
            if last:
                self.store.append(last)
                self.counters["produced"] += len(last)
                self.counters["unchanged"] = self.report.held
        self._commit_now.set()

    async def buffer_stats(self) -> Any:
        assert self.store is not None  # noqa: S101
        return await self._io_call(self.store.stats)

    async def wait_drained(self, timeout: float) -> bool:
        """True once every produced reading is committed and acknowledged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store is not None and not self.store.pending():
                stats = await self.buffer_stats()
                if stats.depth == 0 and stats.gaps_pending == 0 and not (
                        self.uplink and self.uplink.inflight):
                    return True
            self._commit_now.set()
            await asyncio.sleep(0.05)
        return False

    async def _io_call(self, fn: Any, *args: Any) -> Any:
        # SQLite and signing run on one worker thread: commits may fsync (SD cards are slow),
        # and the store is used from one thread at a time.
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def run(self) -> int:
        g = self.cfg.gateway
        await self._io_call(self._preflight)
        key_path = g.path(g.signing_key)
        self._key = await self._io_call(load_or_create_signing_key, key_path)
        self._kid = kid_for(self._key.public_key())
        self.store = await self._io_call(self._open_store)
        await self._start_clock()
        self._start_commander()
        self.uplink = self._make_uplink()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._uplink_task = tg.create_task(self.uplink.run(), name="streetgate.uplink")
                tg.create_task(self._committer(), name="streetgate.buffer.commit")
                self._forward_task = tg.create_task(self._forwarder(),
                                                    name="streetgate.uplink.forward")
                self._start_service_tasks(tg)
                for d in self.cfg.drivers:
                    self._start_driver(d)
                if self.commander is not None:
                    await self.commander.start()
                self.ready.set()
                await self.reporter.step()
                self.notifier.ready()
                _log.info("gateway %s up: %d driver(s), buffer %s (epoch %d)", g.id,
                          len(self._tasks), self.cfg.gateway.path(self.cfg.buffer.path),
                          self.store.epoch)
                await self._stop.wait()
                self.notifier.stopping()
                await self.stop_drivers()
                await self._drain()
                tg.create_task(_leave(), name="streetgate.stop")
        except* _Stopped:
            pass
        finally:
            await self._shutdown()
        return 0

    async def _start_clock(self) -> None:
        assert self.store is not None  # noqa: S101
        store = self.store
        saved = await self._io_call(store.kv_get, "clock")
        # kv_set fsyncs: on the store's worker thread, in order with the commits.
        self.clock = ClockTracker(saved=saved, boot=boot_id(),
                                  save=lambda b: self._io.submit(store.kv_set, "clock", b))
        self._seq_base = store.last_seq + 1 + store.pending()
        self.clock.start(self._next_seq())

    def _next_seq(self) -> int:
        # Seqs are assigned in append order, so the next one follows from the append count.
        # Readings the store refused (malformed) take no seq.
        st = self.store
        return self._seq_base + (st.appended - st.rejected if st else 0)

    def _start_service_tasks(self, tg: asyncio.TaskGroup) -> None:
        tg.create_task(self.reporter.run(), name="streetgate.status")
        tg.create_task(self._clock_loop(), name="streetgate.clock")
        # Watchdog (gateway/notify.py): pings come from this loop while the store's worker
        # thread answers and no MQTT connect attempt hangs; a broker outage is not a fault.
        self.liveness.expect("store", 120.0)
        self.liveness.expect("uplink", 320.0)
        tg.create_task(worker_probe(self.liveness, lambda: self._io_call(_noop)),
                       name="streetgate.watchdog.store")
        tg.create_task(uplink_probe(self.liveness, lambda: self.uplink.state if self.uplink
                                    else "stopped"), name="streetgate.watchdog.uplink")
        tg.create_task(watchdog_loop(self.notifier, self.liveness, why=self.liveness.stale),
                       name="streetgate.watchdog")

    async def _clock_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            was = self.clock.synced
            self.clock.poll(self._next_seq())
            if self.clock.synced != was:
                self.reporter.changed()
            flush_suppressed()  # rate-limited log runs that ended get their summary line

    def _start_driver(self, d: DriverInstance) -> None:
        assert self._tg is not None  # noqa: S101
        task = self._tg.create_task(self._supervise(d.driver, d.instance, d.config),
                                    name=f"streetgate[{d.driver}:{d.instance}]")
        self._tasks[d.instance] = (task, d)

    async def reload(self, path: str | Path) -> bool:
        """Re-read the config: drivers added, removed or changed; uplink reconnected if its
        settings changed. An invalid file is rejected and the running config kept. The signing
        key is re-read too, so a key rotated on disk signs from now on."""
        async with self._reload_lock:  # a second SIGHUP waits for the first to finish
            await self._reload_signing_key()
            return await self._reload(path)

    async def _reload_signing_key(self) -> None:
        if self._key is None:  # not started yet: run() loads it
            return
        g = self.cfg.gateway
        old = self._kid.hex()
        try:
            # On the store's thread, where batches are signed: each is signed by one key.
            changed = await self._io_call(self._swap_signing_key, g.path(g.signing_key))
        except (OSError, KeyFileError) as exc:
            _log.error("reload: signing key not reloaded, still signing with kid %s: %s", old,
                       exc)
            return
        if changed:
            _log.info("reload: signing key changed: signing with kid %s (was %s)",
                      self._kid.hex(), old)
            self.reporter.changed()

    def _swap_signing_key(self, path: Path) -> bool:
        key = load_signing_key(path)
        kid = kid_for(key.public_key())
        if kid == self._kid:
            return False
        self._key, self._kid = key, kid
        return True

    async def _reload(self, path: str | Path) -> bool:
        self.notifier.reloading()
        loop = asyncio.get_running_loop()
        # A driver package installed since the start is found now, as `streetgate check` finds
        # it; drivers already running keep their classes (their modules stay imported).
        if self._rescan:
            self.registry = await loop.run_in_executor(None, _fresh_registry)
        try:
            new = await loop.run_in_executor(
                None, load_config, path, self.registry)
        except ConfigError as exc:
            self.notifier.ready()
            self.reloads["rejected"] += 1
            self.reload_error = "; ".join(exc.lines())[:300]
            _log.error("reload rejected, keeping the running config: %s",
                       "; ".join(exc.lines()))
            return False
        if new.gateway != self.cfg.gateway or new.buffer != self.cfg.buffer:
            _log.warning("reload: [gateway] and [buffer] changes take effect after a restart")
        wanted = {d.instance: d for d in new.drivers}
        for inst, (task, current) in list(self._tasks.items()):
            if wanted.get(inst) != current:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                del self._tasks[inst]
                self.drivers.pop(inst, None)
                _log.info("reload: stopped driver %s", inst)
        for inst, d in wanted.items():
            if inst not in self._tasks:
                self._start_driver(d)
                _log.info("reload: started driver %s (%s)", inst, d.driver)
        old_uplink = self.cfg.uplink
        if new.report != self.cfg.report:
            self.report = ReportFilter(new.report)  # starts over: each point's next is sent
        self.cfg = dataclasses.replace(new, gateway=self.cfg.gateway, buffer=self.cfg.buffer)
        if new.uplink != old_uplink:
            await self._restart_uplink()
        self.reloads["ok"] += 1
        self.reload_error = None
        self._commit_now.set()
        self.reporter.changed()
        self.notifier.ready()
        return True

    async def _restart_uplink(self) -> None:
        assert self.uplink is not None  # noqa: S101
        assert self._tg is not None  # noqa: S101
        old = [t for t in (self._uplink_task, self._forward_task) if t is not None]
        for t in old:
            t.cancel()
        await asyncio.gather(*old, return_exceptions=True)
        await self.uplink.close()
        self.uplink = self._make_uplink()
        self._batch_limit = self.cfg.uplink.batch_max_readings
        self._uplink_task = self._tg.create_task(self.uplink.run(), name="streetgate.uplink")
        self._forward_task = self._tg.create_task(self._forwarder(),
                                                  name="streetgate.uplink.forward")
        _log.info("reload: uplink settings changed; reconnecting")

    def _make_uplink(self) -> Uplink:
        g = self.cfg.gateway
        cmd = self.commander
        return Uplink(
            self.cfg.uplink, gateway_id=g.id, client_id=self.cfg.client_id(),
            on_ack=self._on_ack, on_lost=self._on_lost, status=self.status,
            tls=self._tls_files(), on_command=cmd.on_message if cmd else None,
            on_connected=cmd.on_connected if cmd else None)

    # -- commands (gateway/commander.py) --------------------------------------------------------
    def _start_commander(self) -> None:
        """Commands are taken only when a platform command key is configured."""
        if not self.cfg.commands.keys:
            return
        from gateway.commander import Commander, Hooks  # noqa: PLC0415 - only when taken

        assert self.store is not None  # noqa: S101
        hooks = Hooks(
            gateway_id=self.cfg.gateway.id, state_dir=Path(self.cfg.gateway.state_dir),
            store=self.store, key=lambda: (self._key, self._kid),
            config=lambda: self.cfg.commands,
            drivers=lambda: {inst: d for inst, (d, _h) in self.drivers.items()},
            publish=lambda payload, acked: self.uplink is not None
            and self.uplink.publish_result(payload, acked),
            now_ms=lambda: time.time_ns() // 1_000_000, apply_config=self._apply_config,
            uplink_up=lambda: self.uplink is not None and self.uplink.connected,
            rollback_config=self._rollback_config)
        self.commander = Commander(hooks, self._io_call)

    async def _apply_config(self, text: bytes, kid: bytes) -> tuple[bool, str]:
        """A config file sent by command: checked like ``streetgate check``, kept beside the
        running one as ``<file>.prev``, then applied like SIGHUP. ``(applied, why not)``."""
        path = self.config_path
        if path is None:
            return False, "this gateway was not started from a config file"
        path = Path(path)
        new = path.with_name(path.name + ".new")
        try:
            await self._io_call(_write_synced, new, text)
            cfg = await self._io_call(load_config, new, self.registry)
        except ConfigError as exc:
            new.unlink(missing_ok=True)
            return False, "; ".join(exc.lines())[:450]
        except OSError as exc:
            return False, f"cannot write {new.name}: {exc}"
        if cfg.gateway.id != self.cfg.gateway.id:
            new.unlink(missing_ok=True)
            return False, f"gateway.id {cfg.gateway.id!r} is not this gateway's"
        why = await self._io_call(_lockout, cfg, kid)
        if why:
            new.unlink(missing_ok=True)
            return False, why
        prev = path.with_name(path.name + ".prev")
        await self._io_call(_keep_previous, path, prev, new)
        if not await self.reload(path):
            await self._rollback_config()
            return False, "the new config was refused on reload; the previous one is back"
        _log.warning("config replaced by command; the previous one is kept as %s", prev.name)
        return True, ""

    async def _rollback_config(self) -> str:
        path = self.config_path
        if path is None:
            return "nothing to roll back"
        path = Path(path)
        prev = path.with_name(path.name + ".prev")
        try:
            await self._io_call(_restore_previous, path, prev)
        except OSError as exc:
            return f"cannot restore {prev.name}: {exc}"
        ok = await self.reload(path)
        _log.warning("config rolled back to the previous file (%s)", "applied" if ok else
                     "refused on reload")
        return ("the previous config is back" if ok
                else "the previous config could not be reloaded")

    def _preflight(self) -> None:
        """First boot (seed file), then refuse to run with keys others can read or own."""
        from gateway.startup import startup_problems  # noqa: PLC0415

        g = self.cfg.gateway
        state = Path(g.state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = _lock_state_dir(state)
        if g.seed_file and Path(g.seed_file).is_file():
            from provisioning.firstboot import first_boot  # noqa: PLC0415 - X.509, MQTT claim

            boot = first_boot(state, Path(g.seed_file))
            for message in boot.messages:
                _log.warning("first boot: %s", message)
        # The same checks as `streetgate check` (gateway/startup.py): secret files others can
        # read, TLS files missing, a gateway.id that is not the provisioned one.
        problems = startup_problems(self.cfg, certificate=False)
        if problems:
            raise KeyPermissionError("\n".join(problems))

    def _open_store(self) -> Store:
        b = self.cfg.buffer
        store = Store(self.cfg.gateway.path(b.path), max_bytes=int(b.max_size),
                      synchronous=b.synchronous, drop_policy=b.drop_policy)
        if store.moved_aside is not None:
            _log.error("buffer database was corrupt; moved aside to %s and started fresh",
                       store.moved_aside)
        return store

    def _tls_files(self) -> TlsFiles | None:
        t = self.cfg.uplink.tls
        if not t.enabled:
            return None
        g = self.cfg.gateway
        if t.provisioned:
            from provisioning.identity import tls_paths  # noqa: PLC0415 - optional subsystem

            paths = tls_paths(Path(g.state_dir))
            if paths is None:
                _log.error("tls.provisioned is set but this gateway has no certificate yet")
                return None
            return TlsFiles(str(paths.ca_file), str(paths.cert_file), str(paths.key_file))
        return TlsFiles(str(g.path(t.ca_file)), str(g.path(t.cert_file)) if t.cert_file else None,
                        str(g.path(t.key_file)) if t.key_file else None)

    async def _drain(self) -> None:
        """Final commit, then give in-flight batches a bounded time to be acknowledged."""
        assert self.store is not None  # noqa: S101
        self._drain_from = self.store.delivered
        with contextlib.suppress(StoreError):
            await self._io_call(self.store.commit)
        deadline = time.monotonic() + self.drain_timeout
        while self.uplink and self.uplink.inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - PUBACKs come from paho callbacks; polling a counter is simplest
            await asyncio.sleep(0.02)

    async def _say_what_is_left(self, store: Store, unacked: int) -> None:
        """One line once the uplink is closed: nothing moves any more, so the figures hold."""
        delivered = store.delivered - (self._drain_from or store.delivered)
        try:
            stats = await self._io_call(store.stats)
        except StoreError as exc:
            _log.warning("stopping: %d readings delivered during the drain; the buffer cannot"
                         " say what is left (%s)", delivered, exc)
            return
        _log.info("stopping: %d readings delivered during the drain; %d left in the buffer for"
                  " the next start (%d batches not acknowledged within %.0f s)%s",
                  delivered, stats.depth, unacked, self.drain_timeout,
                  f"; {stats.pending} could not be written and are recorded as lost"
                  if stats.pending else "")

    async def _shutdown(self) -> None:
        if self.commander is not None:
            await self.commander.close()
        unacked = self.uplink.inflight if self.uplink is not None else 0
        if self.uplink is not None:
            await self.uplink.close()
        self.clock.close()
        if self.reporter.path is not None:
            with contextlib.suppress(OSError):
                write_status_file(self.reporter.path, {"state": "offline", "gateway":
                                                       self.cfg.gateway.id, "clean": True})
        if self.store is not None:
            store, self.store = self.store, None
            if self._drain_from is not None:
                await self._say_what_is_left(store, unacked)
            try:
                await self._io_call(store.close)
            except StoreError as exc:
                _log.error("closing the buffer failed: %s", exc)
        self._io.shutdown(wait=True)
        self.notifier.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- tasks ------------------------------------------------------------------------------------
    async def _supervise(self, name: str, instance: str, config: Any) -> None:
        cls = self.registry.get(name)
        if cls is None:
            _log.error("driver %s is not available", name)
            return
        logger = logging.getLogger(f"streetgate.driver.{name}.{instance}")
        assert self.store is not None  # noqa: S101
        ctx = DriverContext(instance=instance, logger=logger, health=HealthBoard(logger),
                            state=DriverState(self.store))
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                driver = cls(config, ctx)
                self.drivers[instance] = (driver, ctx.health)
                await driver.run(_Sink(self))
            except Exception:  # task boundary: a broken driver must not stop the others
                ctx.health.count("crashes")
                logger.exception("driver %s crashed; restarting", instance)
                await backoff.sleep()
                continue
            logger.info("driver %s finished", instance)
            return

    async def _committer(self) -> None:
        assert self.store is not None  # noqa: S101
        window = float(self.cfg.buffer.commit_window)
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(window):
                    await self._commit_now.wait()
            self._commit_now.clear()
            if not self.store.pending():
                continue
            try:
                n = await self._io_call(self.store.commit)
            except StoreError as exc:
                if not failing:
                    _log.error("buffer commit failing, keeping readings in memory: %s", exc)
                    self.reporter.changed()
                failing = True
                self.commit_error = str(exc)
                await asyncio.sleep(1.0)
                continue
            if failing:
                _log.info("buffer commits work again")
                failing = False
                self.commit_error = None
                self.reporter.changed()
            if n:
                self._new_data.set()

    async def _forwarder(self) -> None:
        assert self.uplink is not None  # noqa: S101
        linger = float(self.cfg.uplink.batch_linger)
        last = time.monotonic()
        while True:
            await self.uplink.wait_ready()
            item = await self._lease_message()
            if item is None:
                self._new_data.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._new_data.wait()
                continue
            lease, message = item
            if len(message) > self.uplink.max_payload() and lease.count > 1:
                await self._io_call(self._release, lease)
                self._batch_limit = max(1, lease.count // 2)
                self.counters["split"] += 1
                continue
            if not self.uplink.publish(message, lease):
                await self._io_call(self._release, lease)
                await asyncio.sleep(0.05)
                continue
            self.counters["batches"] += 1
            # A split is for the batch that needed it: grow back towards the configured size.
            self._batch_limit = min(self.cfg.uplink.batch_max_readings, self._batch_limit * 2)
            if lease.count < self._batch_limit and linger > 0:
                # A small batch: let more readings gather before the next one.
                wait = linger - (time.monotonic() - last)
                last = time.monotonic()
                if wait > 0:
                    self._new_data.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._stop.wait()
            else:
                last = time.monotonic()

    async def _lease_message(self) -> tuple[_InFlight, bytes] | None:
        """The next signed batch, or None when there is nothing (or the store is failing)."""
        assert self.uplink is not None  # noqa: S101
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._io, self._next_message, self._batch_limit,
                                   self.uplink.max_payload())
        try:
            item = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Cancelled (uplink restart on reload) while the store thread leased: hand the
            # lease back once it exists, or its rows would stay in flight until a restart.
            fut.add_done_callback(self._release_orphan)
            raise
        except StoreError as exc:
            if self.commit_error is None:
                _log.error("cannot lease from the buffer, retrying: %s", exc)
            await asyncio.sleep(1.0)
            return None
        return item

    def _release_orphan(self, fut: asyncio.Future[tuple[_InFlight, bytes] | None]) -> None:
        if not fut.cancelled() and fut.exception() is None and (item := fut.result()):
            self._io.submit(self._release, item[0])

    def _next_message(self, limit: int, max_payload: int) -> tuple[_InFlight, bytes] | None:
        assert self.store is not None  # noqa: S101
        if self.store.pending():
            # Commit just before a batch rather than on a short timer: fewer pages written per
            # reading (SD wear); the committer task reports failures.
            with contextlib.suppress(StoreError):
                self.store.commit()
        lease = self.store.lease(limit)
        if lease is None:
            return None
        try:
            return self._message(lease, max_payload)
        except BaseException:
            # (a batch seq that cannot be reserved, say): the lease must not stay in flight
            self._results_flying.difference_update(self._riding)
            self.report.put_back(self._riding_unchanged)
            self.store.release(lease)
            raise

    def _message(self, lease: Lease, max_payload: int) -> tuple[_InFlight, bytes]:
        rows = lease.rows
        self._riding_results = self._results()
        self._riding_unchanged = self.report.take_unchanged() if self.report else None
        payload = self._encode(lease, rows)
        if payload is None:
            # Something in these rows cannot be encoded (a float timestamp, an unknown
            # quality, text that is not UTF-8): send what can be, the rest as MALFORMED.
            original = list(rows)  # lease.rows builds its tuples afresh on each pass
            rows = [_sanitized(r) if self._encode(lease, [r]) is None else r for r in original]
            self.counters["malformed"] = self.counters.get("malformed", 0) + sum(
                1 for r, o in zip(rows, original, strict=True) if r is not o)
            payload = self._encode(lease, rows) or b""
        if len(payload) > max_payload and len(rows) == 1:
            # One reading larger than the broker takes: its value cannot travel, its
            # existence can (otherwise it would block everything behind it).
            rows = [_sanitized(rows[0])]
            self.counters["oversized"] = self.counters.get("oversized", 0) + 1
            payload = self._encode(lease, rows) or b""
        # Once encoded, the rows themselves are not needed: ack and release work on the
        # lease's seq span, and a full in-flight window of rows would cost megabytes.
        slim = _InFlight(dataclasses.replace(lease, rows=[]), len(lease.rows), self._riding,
                         self._riding_unchanged)
        return slim, sign1(payload, self._key, self._kid)

    def _results(self) -> list[bytes]:
        """Command results to carry in the next batch (store thread): final ones no batch
        has carried to an acknowledgement yet and none in flight carries now."""
        self._riding = ()
        if self.commander is None:
            return []
        try:
            todo = [(i, r) for i, r in self.commander.unbatched()
                    if i not in self._results_flying][:_RESULTS_PER_BATCH]
        except StoreError:
            return []
        self._riding = tuple(i for i, _ in todo)
        self._results_flying.update(self._riding)
        return [r for _, r in todo]

    def _encode(self, lease: Lease, rows: Sequence[Row]) -> bytes | None:
        assert self.store is not None  # noqa: S101
        spans = self.clock.extension(lease.first_seq, lease.last_seq)
        extra: dict[int, Any] = {K_CLOCK: spans} if spans else {}
        if self._riding_results:
            extra[K_RESULTS] = self._riding_results
        try:
            return encode_batch(
                gateway_id=self.cfg.gateway.id, epoch=self.store.epoch,
                batch_seq=self.store.next_batch_seq(), rows=rows, gaps=lease.gaps,
                losses=lease.losses, unchanged=self._riding_unchanged,
                heartbeats=self.report.heartbeats() if self.report else None,
                extra=extra or None)
        except (ValueError, TypeError, OverflowError):  # UnicodeEncodeError is a ValueError
            return None

    def _release(self, item: _InFlight) -> None:
        self._results_flying.difference_update(item.results)
        if item.unchanged is not None:
            self.report.put_back(item.unchanged)
        if self.store is not None:
            self.store.release(item.lease)

    def _on_ack(self, item: _InFlight) -> None:
        self.clock.delivered(item.lease.first_seq, item.lease.last_seq)
        self.counters["delivered"] += item.count
        if self.store is not None:
            done = self._io.submit(self.store.ack, item.lease)
            done.add_done_callback(lambda f: self._ack_failed(f, item))
            if item.results and self.commander is not None:
                self._io.submit(self._results_batched, item)

    def _results_batched(self, item: _InFlight) -> None:
        assert self.commander is not None  # noqa: S101
        try:
            self.commander.batched(list(item.results))
        except StoreError as exc:
            _log.debug("cannot mark command results as delivered in a batch: %s", exc)
        self._results_flying.difference_update(item.results)

    def _ack_failed(self, fut: Any, item: _InFlight) -> None:
        """The broker has the batch but the buffer could not delete it (disk trouble): make
        the rows leasable again; the verifier drops the resend as a duplicate."""
        if fut.cancelled() or fut.exception() is None or self.store is None:
            return
        _log.error("buffer ack failed, the batch will be sent again: %s", fut.exception())
        with contextlib.suppress(RuntimeError):  # executor already shut down at exit
            self._io.submit(self.store.release, item.lease)

    def _on_lost(self, item: _InFlight) -> None:
        if self.store is not None:
            self._io.submit(self._release, item)
            self._new_data.set()

    def _publish_status(self, _doc: dict[str, Any]) -> None:
        if self.uplink is not None:
            self.uplink.publish_status()

    # -- status ----------------------------------------------------------------------------------
    async def _status_doc(self) -> dict[str, Any]:
        if self.store is not None:
            with contextlib.suppress(StoreError):
                self._stats = await self._io_call(self.store.stats)
        return self.status()

    def status(self) -> dict[str, Any]:
        """The status document; buffer figures from the reporter's last refresh (2 s)."""
        return build_status(
            gateway_id=self.cfg.gateway.id, version=__version__, boot_id=self.boot_id,
            started=self.started, buffer=self._stats, uplink=uplink_view(self.uplink),
            drivers={inst: h.snapshot() for inst, (_, h) in self.drivers.items()},
            driver_kinds={inst: d.driver for inst, (_, d) in self._tasks.items()},
            clock=self.clock.snapshot(), counters=self.counters, kid=self._kid.hex(),
            reloads=dict(self.reloads), buffer_error=self.commit_error,
            reload_error=self.reload_error,
            commands=self.commander.status() if self.commander is not None else None)


def _sanitized(row: Row) -> Row:
    """The row as a MALFORMED reading without a value, its name and time made encodable."""
    seq, point, unit, ts, _value, _quality = row

    def text(v: str) -> str:
        return v.encode("utf-8", "backslashreplace").decode("utf-8")

    stamp = int(ts) if isinstance(ts, (int, float)) and math.isfinite(ts) else 0
    stamp = max(-(1 << 63), min(stamp, (1 << 63) - 1))
    return (seq, text(str(point)), text(unit) if isinstance(unit, str) else None, stamp, None,
            int(Quality.MALFORMED))


#: Command results one batch carries at most (the rest ride with the next ones).
_RESULTS_PER_BATCH = 32


def _pth_files() -> set[Path]:
    import site  # noqa: PLC0415

    out: set[Path] = set()
    for d in map(Path, [*site.getsitepackages(), site.getusersitepackages()]):
        with contextlib.suppress(OSError):
            out.update(p for p in d.iterdir() if p.suffix == ".pth")
    return out


#: The .pth files the interpreter read at start; a reload reads the ones added since.
_PTH_SEEN = _pth_files()


def _read_pth(path: Path) -> None:
    """What the interpreter does with a site-packages .pth file at start (``site`` module):
    directories go on sys.path, ``import`` lines run (an editable install's finder)."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith(("import ", "import\t")):
            exec(line)  # noqa: S102 - exactly what site.addpackage does with these lines
            continue
        entry = (path.parent / line.rstrip()).resolve()
        if entry.is_dir() and str(entry) not in sys.path:
            sys.path.append(str(entry))


def _fresh_registry() -> Registry:
    """The driver registry as the installed packages are now: an install made while the
    daemon ran (its .pth file, its entry points) is found as `streetgate check` finds it."""
    import importlib  # noqa: PLC0415

    for path in sorted(_pth_files() - _PTH_SEEN):
        _PTH_SEEN.add(path)
        try:
            _read_pth(path)
        except Exception as exc:  # noqa: BLE001 - a broken .pth must not stop the reload
            _log.warning("cannot read %s: %s", path, exc)
    importlib.invalidate_caches()
    return load_registry()


def _lockout(cfg: Config, kid: bytes) -> str:
    """Why a config sent by command must not be applied: what ``streetgate check`` would find
    (files, permissions, identity), or command keys that would not trust the key that sent it
    (the platform would be locked out until someone visits the cabinet)."""
    from gateway.startup import startup_problems  # noqa: PLC0415
    from provisioning.keys import KeyFileError, load_public_keys  # noqa: PLC0415

    problems = startup_problems(cfg)
    if problems:
        return "; ".join(problems)[:450]
    if not cfg.commands.keys:
        return "the new config has no [commands] keys: it would lock the platform out"
    paths = [cfg.gateway.path(k) for k in cfg.commands.keys]
    try:
        keys = load_public_keys(paths)
    except (KeyFileError, OSError) as exc:
        return f"[commands] keys: {exc}"
    if kid not in keys:
        return ("the new config's [commands] keys do not include the key that sent it "
                f"({kid.hex() or 'unknown'}): it would lock the platform out")
    return ""


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_previous(path: Path, prev: Path, new: Path) -> None:
    """``path`` becomes ``prev`` (a copy), ``new`` becomes ``path``; both synced."""
    if path.exists():
        _write_synced(prev, path.read_bytes())
    new.replace(path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _restore_previous(path: Path, prev: Path) -> None:
    rejected = path.with_name(path.name + ".rejected")
    _write_synced(rejected, path.read_bytes())
    _write_synced(path.with_name(path.name + ".new"), prev.read_bytes())
    path.with_name(path.name + ".new").replace(path)


class AlreadyRunningError(RuntimeError):
    """Another daemon holds this state directory (and its buffer)."""


def _lock_state_dir(state: Path) -> int:
    """One daemon per state directory: two writers would fight over one buffer's seqs."""
    path = state / "streetgate.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        msg = (f"another streetgate (pid {holder}) is running on {state}; "
               "stop it first (systemctl stop streetgate)")
        raise AlreadyRunningError(msg) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclasses.dataclass(frozen=True, slots=True)
class _InFlight:
    lease: Lease
    count: int
    results: tuple[str, ...] = ()  # ids of the command results the batch carries
    unchanged: Unchanged | None = None  # the readings held back it reports


class _Stopped(Exception):  # noqa: N818 - internal signal to leave the TaskGroup
    pass


def _noop() -> None:
    pass


async def _leave() -> None:
    """Raising inside the TaskGroup cancels every other task: the way out on stop."""
    raise _Stopped
