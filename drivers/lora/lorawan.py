"""LoRaWAN 1.0.x data frames, pure: parse, MIC, FRMPayload crypto, 32-bit FCnt.

References are to the LoRaWAN 1.0.3 specification (LoRa Alliance, 2018); the frame layout,
MIC and encryption are identical in 1.0, 1.0.1, 1.0.2 and 1.0.3. Multi-octet fields are
little endian on the air (§4); DevAddr is shown most significant byte first, as on labels.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

__all__ = [
    "MAX_FCNT_GAP",
    "DataFrame",
    "LorawanError",
    "MType",
    "build_data_frame",
    "compute_mic",
    "crypt_frm_payload",
    "fcnt_ahead",
    "fcnt_behind",
    "mtype_of",
    "parse_data_frame",
    "verify_mic",
]

#: LoRaWAN 1.0.x §4.3.1.5 / Regional Parameters: frames further ahead than this are dropped.
MAX_FCNT_GAP = 16384
_FCNT_MAX = 0xFFFF_FFFF
#: A LoRa packet carries at most 255 bytes (the PHY length field is one byte).
_PHY_MAX = 255


class MType(enum.IntEnum):
    """Message types, LoRaWAN 1.0.3 §4.2.1 table 1."""

    JOIN_REQUEST = 0
    JOIN_ACCEPT = 1
    UNCONFIRMED_UP = 2
    UNCONFIRMED_DOWN = 3
    CONFIRMED_UP = 4
    CONFIRMED_DOWN = 5
    RFU = 6
    PROPRIETARY = 7


_UPLINK = (MType.UNCONFIRMED_UP, MType.CONFIRMED_UP)
_DATA = (*_UPLINK, MType.UNCONFIRMED_DOWN, MType.CONFIRMED_DOWN)


class LorawanError(ValueError):
    """A PHYPayload that is not a usable data frame; ``counter`` names the health counter."""

    def __init__(self, counter: str, message: str) -> None:
        super().__init__(message)
        self.counter = counter


@dataclasses.dataclass(frozen=True, slots=True)
class DataFrame:
    """A parsed (not yet verified) data frame, LoRaWAN 1.0.3 §4.3."""

    mtype: MType
    major: int
    dev_addr: int
    fctrl: int
    fcnt16: int
    fopts: bytes
    fport: int | None
    #: FRMPayload as received (still encrypted).
    frm_payload: bytes
    mic: bytes
    #: MHDR | FHDR | FPort | FRMPayload: the bytes the MIC covers (§4.4).
    signed: bytes

    @property
    def uplink(self) -> bool:
        return self.mtype in _UPLINK

    @property
    def confirmed(self) -> bool:
        return self.mtype in (MType.CONFIRMED_UP, MType.CONFIRMED_DOWN)

    @property
    def adr(self) -> bool:
        return bool(self.fctrl & 0x80)

    @property
    def adr_ack_req(self) -> bool:
        """Uplink FCtrl bit 6 (§4.3.1)."""
        return bool(self.fctrl & 0x40)

    @property
    def ack(self) -> bool:
        return bool(self.fctrl & 0x20)

    @property
    def dev_addr_hex(self) -> str:
        return f"{self.dev_addr:08X}"


def mtype_of(phy: bytes) -> MType:
    """The message type in the MHDR (§4.2)."""
    if not phy:
        raise LorawanError("malformed", "empty PHYPayload")
    return MType(phy[0] >> 5)


def parse_data_frame(phy: bytes) -> DataFrame:
    """Split a data-frame PHYPayload into its fields (§4.2-§4.3.2).

    Raises:
        LorawanError: ``malformed`` (too short, FOpts overrun, FOpts with FPort 0),
            ``bad_major`` (not LoRaWAN R1) or ``not_data`` (join, proprietary, RFU).
    """
    mtype = mtype_of(phy)
    if mtype not in _DATA:
        raise LorawanError("not_data", f"{mtype.name} is not a data frame")
    if phy[0] & 0x03 != 0:
        raise LorawanError("bad_major", f"major version {phy[0] & 0x03} is not LoRaWAN R1")
    # MHDR(1) + DevAddr(4) + FCtrl(1) + FCnt(2) + MIC(4): §4.3.1.
    if len(phy) < 12:
        raise LorawanError("malformed", f"data frame of {len(phy)} bytes is too short")
    if len(phy) > _PHY_MAX:
        raise LorawanError("malformed", f"{len(phy)} bytes do not fit a LoRa packet")
    fctrl = phy[5]
    fopts_len = fctrl & 0x0F
    body_end = len(phy) - 4
    fport_at = 8 + fopts_len
    if fport_at > body_end:
        raise LorawanError("malformed", f"FOptsLen {fopts_len} runs past the frame")
    fport = phy[fport_at] if fport_at < body_end else None
    if fport == 0 and fopts_len:
        # §4.3.1.6: MAC commands are either in FOpts or in a port-0 FRMPayload, never both.
        raise LorawanError("malformed", "FOpts present with FPort 0")
    return DataFrame(
        mtype=mtype,
        major=phy[0] & 0x03,
        dev_addr=int.from_bytes(phy[1:5], "little"),
        fctrl=fctrl,
        fcnt16=int.from_bytes(phy[6:8], "little"),
        fopts=bytes(phy[8:fport_at]),
        fport=fport,
        frm_payload=bytes(phy[fport_at + 1:body_end]) if fport is not None else b"",
        mic=bytes(phy[body_end:]),
        signed=bytes(phy[:body_end]),
    )


def _block(first: int, uplink: bool, dev_addr: int, fcnt: int, last: int) -> bytes:
    """The A_i / B0 block layout shared by §4.3.3.1 and §4.4."""
    return (bytes([first, 0, 0, 0, 0, 0 if uplink else 1])
            + dev_addr.to_bytes(4, "little") + fcnt.to_bytes(4, "little")
            + bytes([0, last]))


def compute_mic(nwk_skey: bytes, signed: bytes, *, dev_addr: int, fcnt: int,
                uplink: bool = True) -> bytes:
    """cmac = aes128_cmac(NwkSKey, B0 | msg); MIC = cmac[0..3] (§4.4)."""
    if len(signed) > 255:
        raise LorawanError("malformed", f"message of {len(signed)} bytes is too long")
    c = CMAC(algorithms.AES(nwk_skey))
    c.update(_block(0x49, uplink, dev_addr, fcnt, len(signed)) + signed)
    return c.finalize()[:4]


def verify_mic(frame: DataFrame, nwk_skey: bytes, fcnt: int) -> bool:
    """Whether ``frame``'s MIC matches for the full 32-bit ``fcnt`` (constant-time compare)."""
    expected = compute_mic(nwk_skey, frame.signed, dev_addr=frame.dev_addr, fcnt=fcnt,
                           uplink=frame.uplink)
    return hmac.compare_digest(expected, frame.mic)


def crypt_frm_payload(key: bytes, data: bytes, *, dev_addr: int, fcnt: int,
                      uplink: bool = True) -> bytes:
    """Encrypt or decrypt FRMPayload (the same XOR with S = S_1..S_k), §4.3.3.1.

    S_i = aes128_encrypt(K, A_i) with A_i = 0x01|0x00*4|Dir|DevAddr|FCnt|0x00|i, i = 1..k.
    Only the last byte of A_i changes and k <= 16, so the blocks are exactly AES-CTR's
    counter blocks starting at A_1.
    """
    if not data:
        return b""
    start = _block(0x01, uplink, dev_addr, fcnt, 1)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(start)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def fcnt_ahead(last: int | None, fcnt16: int, max_gap: int = MAX_FCNT_GAP) -> int | None:
    """The 32-bit FCnt just above ``last`` whose low 16 bits are ``fcnt16`` (§4.3.1.5).

    None when it would be ``last`` itself or more than ``max_gap`` ahead. With no frame seen
    yet the upper 16 bits are taken as zero (a fresh ABP session).
    """
    if last is None:
        return fcnt16
    delta = (fcnt16 - last) & 0xFFFF
    if delta == 0 or delta > max_gap or last + delta > _FCNT_MAX:
        return None
    return last + delta


def fcnt_behind(last: int, fcnt16: int) -> int | None:
    """The 32-bit FCnt at or below ``last`` with low 16 bits ``fcnt16`` (a replay), if any."""
    value = last - ((last - fcnt16) & 0xFFFF)
    return value if value >= 0 else None


def build_data_frame(*, dev_addr: int, fcnt: int, nwk_skey: bytes, app_skey: bytes,
                     fport: int | None, payload: bytes = b"", confirmed: bool = False,
                     fctrl: int = 0, fopts: bytes = b"", uplink: bool = True) -> bytes:
    """An encrypted, MIC-signed data frame (for simulators, tests and field checks)."""
    if len(fopts) > 15:
        raise ValueError("FOpts holds at most 15 bytes")
    if fport is None and payload:
        raise ValueError("a payload needs an FPort")
    kinds = {(True, False): MType.UNCONFIRMED_UP, (True, True): MType.CONFIRMED_UP,
             (False, False): MType.UNCONFIRMED_DOWN, (False, True): MType.CONFIRMED_DOWN}
    mhdr = bytes([kinds[uplink, confirmed] << 5])
    fhdr = (dev_addr.to_bytes(4, "little") + bytes([(fctrl & 0xF0) | len(fopts)])
            + (fcnt & 0xFFFF).to_bytes(2, "little") + fopts)
    body = b""
    if fport is not None:
        key = nwk_skey if fport == 0 else app_skey
        body = bytes([fport]) + crypt_frm_payload(key, payload, dev_addr=dev_addr, fcnt=fcnt,
                                                  uplink=uplink)
    signed = mhdr + fhdr + body
    return signed + compute_mic(nwk_skey, signed, dev_addr=dev_addr, fcnt=fcnt, uplink=uplink)
