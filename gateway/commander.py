"""The cabinet's side of commands: check, remember, perform, report (docs/DESIGN-NOTES.md).

Every command message that arrives on ``<prefix>/<id>/cmd`` gets exactly one final result on
``<prefix>/<id>/cmd/result`` (and inside the batch stream), signed with the gateway's key:

- a command that does not verify, is for another gateway, has expired, reuses an id, or asks
  for something the cabinet's ``[commands]`` config does not allow is ``rejected`` and the
  device is not touched;
- a valid one is recorded (synced to the buffer's database) before anything else happens,
  answered ``accepted``, then performed through its driver and answered ``done`` (with the
  value read back) or ``failed`` (why, and the device's code);
- one whose device is unreachable waits, retried with backoff, and is ``expired`` when its
  time runs out; it survives restarts;
- the same message again (the broker redelivers it, or someone replays it) is never
  performed twice: the stored result is published again, byte for byte.

A result is stored before it is published and published again after every reconnect until
the broker acknowledges it, so a broker outage loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buffer._commands import CommandLog, CommandRow
from drivers.api import Backoff, WriteError
from gateway.command import (
    MAX_CONFIG,
    Command,
    CommandFormatError,
    Result,
    decode_command,
    encode_result,
    open_command,
    signature_ref,
)
from gateway.cose import SignatureError, UnknownKeyError, VerifyError, open1, sign1
from provisioning.keys import KeyFileError, load_public_keys

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from buffer.store import Store
    from drivers.api import Driver, Value
    from gateway.config import CommandsConfig, WritableConfig

__all__ = ["Commander"]

_log = logging.getLogger("streetgate.commands")
_RECENT = 20
#: No command is larger than a config file and its envelope: longer messages are not parsed.
_MAX_MESSAGE = MAX_CONFIG + 16 * 1024


class _RefusedError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Hooks:
    """What the commander needs from the daemon (kept small so tests can drive it whole)."""

    gateway_id: str
    state_dir: Path
    store: Store
    key: Callable[[], tuple[Ed25519PrivateKey, bytes]]  # the signing key in use, and its kid
    config: Callable[[], CommandsConfig]
    drivers: Callable[[], dict[str, Driver[Any]]]
    publish: Callable[[bytes, Callable[[], None]], bool]
    now_ms: Callable[[], int]
    #: (config text, kid of the key that signed it) -> (applied, why not)
    apply_config: Callable[[bytes, bytes], Awaitable[tuple[bool, str]]]
    uplink_up: Callable[[], bool]
    rollback_config: Callable[[], Awaitable[str]]


class Commander:
    def __init__(self, hooks: Hooks, io: Callable[..., Awaitable[Any]]) -> None:
        self.h = hooks
        self._io = io  # runs a blocking call off the loop (the store's executor)
        self.log = CommandLog(hooks.store)
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        self._keys_from: tuple[tuple[str, int], ...] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_write: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._config_lock = asyncio.Lock()
        self._kids: dict[str, bytes] = {}  # the key each config command was signed with
        self.counters = {"received": 0, "done": 0, "rejected": 0, "failed": 0, "expired": 0,
                         "replayed": 0, "redelivered": 0}
        self.recent: deque[dict[str, Any]] = deque(maxlen=_RECENT)

    # -- entry points (loop thread) ---------------------------------------------------------
    def on_message(self, message: bytes, ack: Callable[[], None] | None = None) -> None:
        """A message from the command topic. ``ack`` sends its PUBACK: called once the
        command is recorded (or its refusal stored), so a crash before that makes the broker
        deliver it again."""
        self._spawn(self._handle_then_ack(message, ack), "streetgate.command")

    async def _handle_then_ack(self, message: bytes, ack: Callable[[], None] | None) -> None:
        try:
            await self._handle(message)
        except Exception:  # noqa: BLE001 - whatever failed, the message is not acknowledged
            # The store failed (full disk, say): not acknowledged, so the broker delivers it
            # again with the next session.
            _log.exception("command message not handled; the broker will deliver it again")
            return
        if ack is not None:
            ack()

    def on_connected(self) -> None:
        self._spawn(self._republish(), "streetgate.command.republish")

    async def start(self) -> None:
        """Pick up what the last run left: commands still to perform, results to send."""
        self._spawn(self._maintain(), "streetgate.command.prune")
        rows = await self._io(self.log.open)
        for row in rows:
            try:
                cmd = decode_command(_payload(row.message))
            except (CommandFormatError, VerifyError):
                await self._finish(row.id, row.ref, "failed", reason="malformed",
                                   detail="stored command unreadable")
                continue
            if cmd.config is not None:
                with contextlib.suppress(VerifyError):
                    self._kids[cmd.id] = open1(row.message, self._trusted())[0]
            if row.state == "performing" and cmd.config is not None:
                self._spawn(self._watch_config(cmd, row.ref), f"streetgate.command.{cmd.id}")
            elif row.state == "performing":
                await self._finish(cmd.id, row.ref, "failed", point=cmd.point,
                                   reason="interrupted", detail="the gateway stopped during "
                                   "the write; the device may or may not have the new value")
            else:
                self._perform_later(cmd, row.ref)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {**self.counters, "pending": sorted(self._running), "recent": list(self.recent)}

    # -- the work -----------------------------------------------------------------------------
    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _trusted(self) -> dict[bytes, Ed25519PublicKey]:
        cfg = self.h.config()
        paths = [p if p.is_absolute() else self.h.state_dir / p for p in map(Path, cfg.keys)]
        # A key file replaced under the same name is read again.
        wanted = tuple((str(p), _mtime(p)) for p in paths)
        if wanted != self._keys_from:
            try:
                self._keys = load_public_keys(paths)
            except (KeyFileError, OSError, ValueError) as exc:
                _log.error("command keys: %s; every command is refused until this is fixed",
                           exc)
                self._keys = {}
            self._keys_from = wanted
        return self._keys

    async def _handle(self, message: bytes) -> None:
        self.counters["received"] += 1
        if len(message) > _MAX_MESSAGE:
            await self._refuse_untrusted(message[-16:], "malformed",
                                         f"{len(message)} bytes: larger than any command")
            return
        ref = signature_ref(message)
        try:
            cmd, ref, kid = open_command(message, self._trusted())
        except (SignatureError, UnknownKeyError, VerifyError, CommandFormatError) as exc:
            reason = ("bad-signature" if isinstance(exc, SignatureError) else
                      "unknown-key" if isinstance(exc, UnknownKeyError) else "malformed")
            await self._refuse_untrusted(ref, reason, str(exc))
            return
        known = await self._io(self.log.get, cmd.id)
        if known is not None:
            await self._again(cmd, ref, known)
            return
        now = self.h.now_ms()
        try:
            target = self._check(cmd, now)
        except _RefusedError as r:
            status = "expired" if r.reason == "expired" else "rejected"
            res = Result(self.h.gateway_id, cmd.id, status, now, ref, point=cmd.point,
                         reason=r.reason, detail=r.detail)
            signed = self._sign(res)
            if not await self._record(cmd, ref, message, now, result=signed):
                await self._again(cmd, ref)  # the same message, handled a moment ago
                return
            self._announce(res)
            self._send(cmd.id, signed)
            return
        if target[0] is not None:
            # The rate slot is taken at once, before anything awaits: a command arriving at
            # the same moment finds it taken.
            self._last_write[target[0]] = time.monotonic()
        if not await self._record(cmd, ref, message, now, result=None):
            await self._again(cmd, ref)
            return
        if cmd.config is not None:
            self._kids[cmd.id] = kid
        self._answer(Result(self.h.gateway_id, cmd.id, "accepted", now, ref, point=target[0]))
        self._perform_later(cmd, ref)

    async def _refuse_untrusted(self, ref: bytes, reason: str, detail: str) -> None:
        """A message that does not verify: refused, answered (best effort, not stored: it
        could be anyone's), never performed. Its id is not trusted either: the result says
        "?" and names the message by its ``ref`` only."""
        cid = "?"
        self.counters["rejected"] += 1
        _log.warning("command %s refused: %s", cid, detail)
        self._note(cid, "rejected", reason, None)
        self._answer(Result(self.h.gateway_id, cid, "rejected", self.h.now_ms(), ref,
                            reason=reason, detail=detail))

    async def _again(self, cmd: Command, ref: bytes, known: CommandRow | None = None) -> None:
        known = known or await self._io(self.log.get, cmd.id)
        if known is None:
            return
        if known.ref != ref:
            # Another message under a used id: a replay with altered content, or a platform bug.
            self.counters["replayed"] += 1
            _log.warning("command %s refused: its id was used before by another command",
                         cmd.id)
            self._answer(Result(self.h.gateway_id, cmd.id, "rejected", self.h.now_ms(), ref,
                                point=cmd.point, reason="replayed",
                                detail="this command id was used before"))
            return
        self.counters["redelivered"] += 1
        _log.info("command %s seen before (redelivered or replayed): not performed again",
                  cmd.id)
        if known.result is not None:
            self.h.publish(known.result, lambda: None)

    def _check(self, cmd: Command, now: int) -> tuple[str | None, Value]:
        """The point and value to write (None for a config); _RefusedError says why not."""
        self._check_envelope(cmd, now)
        cfg = self.h.config()
        if cmd.config is not None:
            if not cfg.accept_config:
                raise _RefusedError("not-allowed", "this cabinet does not accept config by "
                                    "command ([commands] accept_config)")
            return None, None
        point, value = self._target(cmd)
        rule = next((w for w in cfg.writable if w.point == point), None)
        if rule is None:
            raise _RefusedError("not-writable", f"{point} is not writable "
                                "([[commands.writable]])")
        _check_value(rule, value)
        if self._driver_for(point) is None:
            raise _RefusedError("no-driver", f"no running driver can write {point}")
        last = self._last_write.get(point)
        if last is not None and time.monotonic() - last < rule.min_interval:
            raise _RefusedError("rate-limited", f"{point} was written "
                                f"{time.monotonic() - last:.1f} s ago; at most one write "
                                f"every {rule.min_interval:g} s")
        return point, value

    def _target(self, cmd: Command) -> tuple[str, Value]:
        if cmd.action is None:
            assert cmd.point is not None  # noqa: S101 - decode_command guarantees one kind
            return cmd.point, cmd.value
        action = next((a for a in self.h.config().actions if a.name == cmd.action), None)
        if action is None:
            raise _RefusedError("unknown-action", f"no action {cmd.action!r} in [commands]")
        return action.point, action.value

    def _check_envelope(self, cmd: Command, now: int) -> None:
        cfg = self.h.config()
        if not self._keys:
            raise _RefusedError("commands-disabled", "no command key configured")
        if cmd.gateway != self.h.gateway_id:
            raise _RefusedError("wrong-gateway", f"for gateway {cmd.gateway!r}, this is "
                           f"{self.h.gateway_id!r}")
        if now > cmd.expires:
            raise _RefusedError("expired", f"expired {(now - cmd.expires) / 1000:.1f} s ago")
        if cmd.issued > now + cfg.clock_skew * 1000:
            raise _RefusedError("malformed", "issued in the future (check the platform's clock)")
        if (cmd.expires - cmd.issued) > cfg.max_ttl * 1000:
            raise _RefusedError("not-allowed", f"valid for longer than max_ttl "
                                f"({cfg.max_ttl:g} s)")

    def _driver_for(self, point: str) -> Driver[Any] | None:
        for driver in self.h.drivers().values():
            try:
                if point in set(driver.writable_points()):
                    return driver
            except Exception:  # noqa: BLE001 - a driver's bug must not stop commands
                _log.exception("writable_points() of %s failed", driver.name)
        return None

    async def _record(self, cmd: Command, ref: bytes, message: bytes, now: int, *,
                      result: bytes | None) -> bool:
        """Remember the command (with its final result when it is refused at once); False
        when its id is known already."""
        added: bool = await self._io(lambda: self.log.add(
            cmd.id, ref, received=now, expires=cmd.expires, message=message,
            state="final" if result is not None else "pending", result=result))
        return added

    def _perform_later(self, cmd: Command, ref: bytes) -> None:
        if cmd.id not in self._running:
            task = self._spawn(self._perform(cmd, ref), f"streetgate.command.{cmd.id}")
            self._running[cmd.id] = task
            task.add_done_callback(lambda _t: self._running.pop(cmd.id, None))

    async def _perform(self, cmd: Command, ref: bytes) -> None:
        try:
            if cmd.config is not None:
                async with self._config_lock:  # one config at a time: they share the files
                    await self._apply_config(cmd, ref)
                return
            await self._perform_write(cmd, ref)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or a failing store: still a result
            _log.exception("command %s failed", cmd.id)
            with contextlib.suppress(Exception):
                await self._finish(cmd.id, ref, "failed", point=cmd.point,
                                   reason="interrupted", detail=f"internal error: {exc}")

    async def _perform_write(self, cmd: Command, ref: bytes) -> None:
        """Commands for one point run one at a time, in the order they were accepted (the
        point's lock is fair and held through retries), each re-checked before every try."""
        cfg = self.h.config()
        backoff = Backoff(float(cfg.retry), 60.0)
        point = cmd.point or "?"
        lock = self._locks.setdefault(self._target_point(cmd), asyncio.Lock())
        try:
            async with asyncio.timeout(max(0.0, (cmd.expires - self.h.now_ms()) / 1000)):
                await lock.acquire()
        except TimeoutError:
            await self._finish(cmd.id, ref, "expired", point=point, reason="expired",
                               detail="expired while earlier commands for its point ran")
            return
        try:
            while True:
                try:
                    point, value = self._recheck(cmd)
                except _RefusedError as r:
                    await self._finish(cmd.id, ref, "rejected", point=point, reason=r.reason,
                                       detail=r.detail)
                    return
                left = (cmd.expires - self.h.now_ms()) / 1000
                if left <= 0:
                    await self._finish(cmd.id, ref, "expired", point=point, reason="expired",
                                       detail="the device could not be reached before the "
                                       "command expired")
                    return
                error = await self._attempt(cmd, ref, point, value, left)
                if error is None:
                    return
                if error.reason not in ("unavailable", "timeout"):
                    await self._finish(cmd.id, ref, "failed", point=point, reason=error.reason,
                                       detail=error.detail, code=error.code, value=error.value)
                    return
                # Not there, or no answer: the value is absolute, so trying again leaves the
                # device as one write would.
                await self._io(self.log.set_state, cmd.id, "pending")
                _log.info("command %s: %s; retrying until it expires", cmd.id, error.detail)
                await asyncio.sleep(min(backoff.next_delay() + float(cfg.retry) / 2,
                                        max(0.0, (cmd.expires - self.h.now_ms()) / 1000)
                                        + 0.01))
        finally:
            lock.release()

    def _recheck(self, cmd: Command) -> tuple[str, Value]:
        """The point and value, checked again against the config now (a reload may have
        narrowed it while the command waited)."""
        point, value = self._target(cmd)
        rule = next((w for w in self.h.config().writable if w.point == point), None)
        if rule is None:
            raise _RefusedError("not-writable", f"{point} is no longer writable")
        _check_value(rule, value)
        return point, value

    def _target_point(self, cmd: Command) -> str:
        try:
            return self._target(cmd)[0]
        except _RefusedError:
            return cmd.point or f"action:{cmd.action}"

    async def _attempt(self, cmd: Command, ref: bytes, point: str, value: Value,
                       left: float) -> WriteError | None:
        """One write; None when it is done (and its result recorded)."""
        driver = self._driver_for(point)
        if driver is None:
            return WriteError("unavailable", f"no running driver can write {point}")
        await self._io(self.log.set_state, cmd.id, "performing")
        self._last_write[point] = time.monotonic()
        try:
            async with asyncio.timeout(left):
                got = await driver.write(point, value)
        except WriteError as exc:
            return exc
        except TimeoutError:
            return WriteError("timeout", "no answer before the command expired")
        except Exception as exc:  # noqa: BLE001 - a driver bug is a failed write
            _log.exception("write of %s by %s failed", point, driver.name)
            return WriteError("device-error", f"driver error: {exc}")
        await self._finish(cmd.id, ref, "done", point=point, value=got)
        return None

    # -- remote config ---------------------------------------------------------------------
    async def _apply_config(self, cmd: Command, ref: bytes) -> None:
        assert cmd.config is not None  # noqa: S101
        if self.h.now_ms() > cmd.expires:
            await self._finish(cmd.id, ref, "expired", reason="expired",
                               detail="expired before it could be applied")
            return
        ok, detail = await self.h.apply_config(cmd.config, self._kids.pop(cmd.id, b""))
        if not ok:
            await self._finish(cmd.id, ref, "rejected", reason="invalid-config", detail=detail)
            return
        # Only now: a crash before the swap leaves it pending, and it is applied again.
        await self._io(self.log.set_state, cmd.id, "performing")
        await self._watch_config(cmd, ref)

    async def _watch_config(self, cmd: Command, ref: bytes) -> None:
        """Keep the new config if the uplink is up within ``config_rollback``; else go back."""
        wait = float(self.h.config().config_rollback)
        deadline = asyncio.get_running_loop().time() + wait
        # Up for a moment is not enough: the new settings must hold a connection.
        steady = 0
        while asyncio.get_running_loop().time() < deadline:
            steady = steady + 1 if self.h.uplink_up() else 0
            if steady >= 3:
                await self._finish(cmd.id, ref, "done", detail="config applied; uplink up")
                return
            await asyncio.sleep(0.5)
        detail = await self.h.rollback_config()
        await self._finish(cmd.id, ref, "failed", reason="rolled-back",
                           detail=f"the uplink did not come back within {wait:g} s; {detail}")

    # -- results -----------------------------------------------------------------------------
    async def _finish(self, cid: str, ref: bytes, status: str, *, point: str | None = None,
                      value: Value = None, reason: str | None = None, detail: str | None = None,
                      code: int | None = None) -> None:
        res = Result(self.h.gateway_id, cid, status, self.h.now_ms(), ref, point=point,
                     value=value, reason=reason, detail=detail, code=code)
        signed = self._sign(res)
        await self._io(self.log.finish, cid, signed, res.ts)
        self._announce(res)
        self._send(cid, signed)

    def _announce(self, res: Result) -> None:
        self.counters[res.status] = self.counters.get(res.status, 0) + 1
        log = _log.info if res.status == "done" else _log.warning
        log("command %s %s%s", res.id, res.status,
            f": {res.reason}: {res.detail}" if res.reason else "")
        self._note(res.id, res.status, res.reason, res.value)

    def _note(self, cid: str, status: str, reason: str | None, value: Value) -> None:
        self.recent.append({"id": cid, "status": status, "reason": reason,
                            "value": value if isinstance(value, bool | int | float | str)
                            else None, "at": round(time.time())})

    def _sign(self, res: Result) -> bytes:
        key, kid = self.h.key()  # the one batches use now (SIGHUP may have rotated it)
        return sign1(encode_result(res), key, kid)

    def _answer(self, res: Result) -> None:
        """Publish a result that is not stored: progress (accepted), or the answer to a
        message that cannot be trusted or reuses an id. Final results go through _finish."""
        self.h.publish(self._sign(res), lambda: None)

    def _send(self, cid: str, signed: bytes) -> None:
        def acked() -> None:
            self._spawn(self._io(self.log.sent, cid), "streetgate.command.sent")

        self.h.publish(signed, acked)

    async def _republish(self) -> None:
        for row in await self._io(lambda: self.log.unsent(limit=100_000)):
            if row.result is not None:
                self._send(row.id, row.result)

    async def _maintain(self) -> None:
        """Forget commands long expired whose result went up, once an hour."""
        while True:
            with contextlib.suppress(Exception):
                gone = await self._io(self.prune)
                if gone:
                    _log.debug("forgot %d old commands", gone)
            await asyncio.sleep(3600)

    # -- the batch stream ----------------------------------------------------------------
    def unbatched(self) -> list[tuple[str, bytes]]:
        """Signed final results not yet carried by an acknowledged batch (store thread)."""
        return [(r.id, r.result) for r in self.log.unbatched() if r.result is not None]

    def batched(self, ids: list[str]) -> None:
        """Store thread: a batch carrying these results was acknowledged."""
        self.log.batched(ids)

    def prune(self) -> int:
        keep = float(self.h.config().keep_results) * 1000
        return self.log.prune(self.h.now_ms() - int(keep))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _payload(message: bytes) -> bytes:
    from gateway.cose import strict_loads  # noqa: PLC0415

    item = strict_loads(message, what="COSE_Sign1", allow_tags=True)
    payload = item.value[2]
    if not isinstance(payload, bytes):
        raise CommandFormatError("no payload")
    return payload


def _number(v: object) -> bool:
    try:
        return type(v) in (int, float) and math.isfinite(v)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float
        return False


def _check_value(rule: WritableConfig, value: Value) -> None:
    if rule.allowed is not None:
        if not any(type(a) is type(value) and a == value for a in rule.allowed):
            raise _RefusedError("not-allowed", f"{value!r} is not one of {rule.allowed!r}")
        return
    if rule.min is None and rule.max is None and rule.step is None:
        return
    if not _number(value):
        raise _RefusedError("out-of-range", f"{value!r}: expected a number")
    v = float(value)  # type: ignore[arg-type]
    if rule.min is not None and v < rule.min:
        raise _RefusedError("out-of-range", f"{value!r} is below the minimum {rule.min:g}")
    if rule.max is not None and v > rule.max:
        raise _RefusedError("out-of-range", f"{value!r} is above the maximum {rule.max:g}")
    if rule.step is not None:
        k = (v - (rule.min or 0.0)) / rule.step
        if abs(k - round(k)) > 1e-9:
            raise _RefusedError("out-of-range", f"{value!r} is not on the step {rule.step:g} from "
                           f"{rule.min or 0:g}")

