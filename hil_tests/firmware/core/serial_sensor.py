"""A streaming serial sensor: the frames of the serial simulator's profiles, with noise.

``nmea-weather`` streams NMEA 0183 MWV, MDA and XDR sentences (checksum: XOR of the bytes
between ``$`` and ``*``, NMEA 0183 §5.3); ``pm-sensor`` streams 32-byte PMS5003T-style frames
("BM", length 28, 13 big-endian words, 16-bit sum); ``ascii-counter`` answers ``READ`` with
``C1=<n>;C2=<n>``. The gateway reads them with the serial driver's configs for those profiles.
"""

from .crc import Rng

PROFILES = ("nmea-weather", "pm-sensor", "ascii-counter")
FAULTS = ("none", "silent", "noise")
NOISE = ("garbage", "corrupt", "truncate", "oversize")


def sentence(body: str) -> bytes:
    """``"WIMWV,..."`` -> ``b"$WIMWV,...*hh\\r\\n"``."""
    raw = body.encode()
    check = 0
    for byte in raw:
        check ^= byte
    return b"$" + raw + b"*" + f"{check:02X}".encode() + b"\r\n"


class SerialSensor:
    """One simulated device on a UART: streams frames each tick or answers queries."""

    def __init__(self, profile: str, *, rng: "Rng | None" = None, rate: float = 1.0) -> None:
        if profile not in PROFILES:
            raise ValueError("unknown profile " + profile + "; expected one of "
                             + ", ".join(PROFILES))
        self.profile = profile
        self.rng = rng or Rng(7)
        self.rate = rate
        self.fault = "none"
        self.noise = 0.0
        self.state: dict[str, float] = {}
        self.next_ms: int | None = None
        self.rx = bytearray()
        self.stats = {"frames": 0, "noisy": 0, "answers": 0}

    def set_fault(self, kind: str, arg: float = 0.0) -> None:
        """``none``, ``silent`` (sends nothing) or ``noise`` (``arg``: share of bad frames)."""
        if kind not in FAULTS:
            raise ValueError("unknown fault " + kind + "; expected one of " + ", ".join(FAULTS))
        if kind == "noise" and not 0.0 <= arg <= 1.0:
            raise ValueError("noise rate must be 0..1")
        self.fault = kind
        self.noise = arg if kind == "noise" else 0.0

    def due(self, now_ms: int) -> "list[bytes]":
        """The frames a streaming profile sends at ``now_ms`` (empty between ticks)."""
        if self.profile == "ascii-counter" or self.rate <= 0:
            return []
        if self.next_ms is None:
            self.next_ms = now_ms
        if now_ms < self.next_ms:
            return []
        self.next_ms = max(self.next_ms + int(1000 / self.rate), now_ms)
        return self._out(self.frames())

    def feed(self, data: bytes) -> "list[bytes]":
        """Bytes from the gateway; the answers to every complete query line."""
        self.rx.extend(data)
        out: list[bytes] = []
        while b"\n" in self.rx or len(self.rx) > 256:
            raw = bytes(self.rx)
            cut = raw.find(b"\n")
            line, rest = (raw, b"") if cut < 0 else (raw[:cut], raw[cut + 1:])
            self.rx = bytearray(rest)
            answer = self.answer(line)
            if answer is not None:
                self.stats["answers"] += 1
                out.extend(self._out([answer]))
        return out

    def _out(self, frames: "list[bytes]") -> "list[bytes]":
        if self.fault == "silent":
            return []
        self.stats["frames"] += len(frames)
        return [self._noisy(f) for f in frames]

    def _walk(self, key: str, start: float, step: float, lo: float, hi: float) -> float:
        value = self.state.get(key, start) + self.rng.uniform(-step, step)
        self.state[key] = min(hi, max(lo, value))
        return self.state[key]

    def frames(self) -> "list[bytes]":
        """One tick of the profile's frames, clean."""
        if self.profile == "nmea-weather":
            return self._weather()
        if self.profile == "pm-sensor":
            return [self._pm()]
        return []

    def _weather(self) -> "list[bytes]":
        t = self._walk("t", 12.0, 0.1, -30, 50)
        rh = self._walk("rh", 60.0, 0.5, 5, 100)
        bar = self._walk("bar", 1.0132, 0.0005, 0.95, 1.06)
        direction = (self.state.get("dir", 200.0) + self.rng.uniform(-5, 5)) % 360
        self.state["dir"] = direction
        ms = self._walk("ms", 4.0, 0.3, 0, 40)
        dew = t - (100 - rh) / 5
        kn = ms / (1852 / 3600)
        return [
            sentence(f"WIMWV,{direction:.1f},R,{ms:.1f},M,A"),
            sentence(f"WIMWV,{(direction + 10) % 360:.1f},T,{ms * 1.1:.1f},M,A"),
            sentence(f"WIMDA,{bar * 29.53:.3f},I,{bar:.4f},B,{t:.1f},C,,C,{rh:.1f},,{dew:.1f},C,"
                     f"{direction:.1f},T,,M,{kn:.1f},N,{ms:.1f},M"),
            sentence(f"WIXDR,C,{t:.1f},C,TempAir,P,{bar:.5f},B,Barometer,H,{rh:.1f},P,RelHum"),
        ]

    def _pm(self) -> bytes:
        pm25 = round(self._walk("pm25", 12.0, 1.0, 0, 500))
        t = self._walk("tp", 21.0, 0.1, -20, 60)
        rh = self._walk("rhp", 45.0, 0.5, 0, 100)
        pm1, pm10 = round(pm25 * 0.7), round(pm25 * 1.3)
        words = [pm1, pm25, pm10, pm1, pm25, pm10, pm25 * 120, pm25 * 40, pm25 * 9, pm25,
                 round(t * 10) & 0xFFFF, round(rh * 10), 0x91]
        body = b"BM\x00\x1c" + b"".join(bytes([(w >> 8) & 0xFF, w & 0xFF]) for w in words)
        total = sum(body) & 0xFFFF
        return body + bytes([total >> 8, total & 0xFF])

    def answer(self, line: bytes) -> "bytes | None":
        """The answer to one query line (``ascii-counter`` only)."""
        if self.profile != "ascii-counter":
            return None
        cmd = line.strip().upper()
        if cmd == b"READ":
            c1 = self.state.get("c1", 100.0) + self.rng.below(6)
            c2 = self.state.get("c2", 50.0) + self.rng.below(4)
            self.state["c1"], self.state["c2"] = c1, c2
            return f"C1={int(c1)};C2={int(c2)}\r\n".encode()
        if cmd == b"ID":
            return b"ID=RIG-PICO v1\r\n"
        return b"ERR\r\n" if cmd else None

    def _noisy(self, frame: bytes) -> bytes:
        if self.noise <= 0 or self.rng.random() >= self.noise:
            return frame
        self.stats["noisy"] += 1
        kind = NOISE[self.rng.below(len(NOISE))]
        if kind == "garbage":
            return bytes(self.rng.below(256) for _ in range(1 + self.rng.below(24))) + frame
        if kind == "corrupt":
            i = len(frame) // 2
            return frame[:i] + bytes([frame[i] ^ (1 << self.rng.below(8))]) + frame[i + 1:]
        if kind == "truncate":
            return frame[:len(frame) // 2]
        return bytes(0x21 + self.rng.below(0x5E) for _ in range(300)) + frame
