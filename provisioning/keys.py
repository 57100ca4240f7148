"""The gateway's Ed25519 signing key on disk: created once, owner-only, refused when exposed.

The private key is a PKCS#8 PEM file (unencrypted: the daemon starts unattended) that only
the service user may read. A key file readable by group or others, or owned by another
user, is refused with a message that says how to fix it (the same rule as OpenSSH's
"UNPROTECTED PRIVATE KEY FILE").

The daemon reads and writes that file without ``cryptography.hazmat.primitives.serialization``:
the package imports its SSH, cipher and legacy-algorithm modules, resident for the daemon's
whole life, to frame 48 bytes. A file in any other form goes to it (:func:`_parse_private`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import pwd
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provisioning._files import fsync_dir

__all__ = [
    "KeyFileError",
    "KeyFormatError",
    "KeyPermissionError",
    "check_key_file",
    "fingerprint",
    "key_id",
    "load_or_create_signing_key",
    "load_public_key",
    "load_public_keys",
    "load_signing_key",
    "parse_public_pem",
    "public_key_pem",
]

#: Bytes of SHA-256 over the raw public key that name it on the wire (COSE ``kid``).
KEY_ID_BYTES = 8
_MAX_KEY_FILE = 64 * 1024
#: An Ed25519 private key as PKCS#8 is this DER and the 32-byte seed (RFC 8410 §7):
#: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN, _PEM_END = b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"  # RFC 7468 §10


class KeyFileError(Exception):
    """A key file cannot be used."""


class KeyPermissionError(KeyFileError):
    """A private key file is exposed to other users (mode or owner)."""


class KeyFormatError(KeyFileError):
    """A key file is not the Ed25519 PEM it should be."""


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """The key's id: the first 8 bytes of SHA-256 over its 32 raw bytes (RFC 8032 §5.1.5)."""
    return hashlib.sha256(public_key.public_bytes_raw()).digest()[:KEY_ID_BYTES]


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """The key id as 16 lowercase hex digits, as printed by ``streetgate key`` and logs."""
    return key_id(public_key).hex()


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public half as a SubjectPublicKeyInfo PEM (RFC 8410 §4)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _username(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid: int) -> str:
    name = _username(uid)
    return f"uid {uid}" if name == str(uid) else f"uid {uid} ({name})"


def _check_stat(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyPermissionError(f"signing key {path} is not a regular file")
    me = os.geteuid()
    if st.st_uid != me:
        raise KeyPermissionError(
            f"signing key {path} is owned by {_user(st.st_uid)}, not by {_user(me)} that "
            f"runs streetgate; fix: chown {_username(me)} {path} (and chmod 600 {path})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyPermissionError(
            f"signing key {path} has mode {mode:04o}: it is readable or writable by group or "
            f"others and must be 0600; fix: chmod 600 {path}")


def check_key_file(path: Path) -> None:
    """Raise :class:`KeyPermissionError` unless ``path`` is a 0600 (or tighter) file we own."""
    _check_stat(path, path.stat())


def _read_checked(path: Path) -> bytes:
    # Check the opened file itself (fstat), so the file read is the file checked.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_stat(path, os.fstat(fd))
        return os.read(fd, _MAX_KEY_FILE)
    finally:
        os.close(fd)


def _pem(seed: bytes) -> bytes:
    """The PKCS#8 PEM of an Ed25519 seed, as ``private_bytes(PEM, PKCS8, NoEncryption())``."""
    return b"%s\n%s\n%s\n" % (_PEM_BEGIN, base64.b64encode(_PKCS8_ED25519 + seed), _PEM_END)


def _parse_pem(data: bytes) -> Ed25519PrivateKey | None:
    """The key of a file in the form :func:`_pem` writes, or None for any other content."""
    text = data.strip()
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        return None
    try:
        der = base64.b64decode(b"".join(text[len(_PEM_BEGIN):-len(_PEM_END)].split()),
                               validate=True)
    except binascii.Error:
        return None
    if len(der) != len(_PKCS8_ED25519) + 32 or not der.startswith(_PKCS8_ED25519):
        return None
    return Ed25519PrivateKey.from_private_bytes(der[len(_PKCS8_ED25519):])


def _parse_private(path: Path, data: bytes) -> Ed25519PrivateKey:
    fast = _parse_pem(data)
    if fast is not None:
        return fast
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography says "Password was not given but key is encrypted"
        raise KeyFormatError(f"signing key {path} is encrypted; streetgate needs an "
                             "unencrypted PKCS#8 PEM (protect it with file permissions)") from exc
    except ValueError as exc:
        raise KeyFormatError(f"signing key {path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"signing key {path} is a {type(key).__name__}, not Ed25519")
    return key


def _make_private_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    directory.chmod(0o700)  # mkdir's mode is narrowed by the umask, never widened: set it


def _create(path: Path) -> None:
    """Write a new key to a 0600 temp file, then link it in: it appears whole or not at all."""
    pem = _pem(Ed25519PrivateKey.generate().private_bytes_raw())
    _make_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() never replaces: if another process created the key meanwhile, theirs wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
    fsync_dir(path.parent)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key at ``path``; never creates one (a reload must not).

    Raises:
        FileNotFoundError: no key at ``path``.
        KeyPermissionError: the file is group/other-accessible or owned by another user.
        KeyFormatError: the file is not an unencrypted Ed25519 PKCS#8 PEM.
    """
    return _parse_private(Path(path), _read_checked(Path(path)))


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key at ``path``, creating it (0600, parent 0700) when absent.

    Raises:
        KeyPermissionError: the file is group/other-accessible or owned by another user.
        KeyFormatError: the file is not an unencrypted Ed25519 PKCS#8 PEM.
    """
    path = Path(path)
    if not path.exists():
        _create(path)
    return _parse_private(path, _read_checked(path))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key PEM (SubjectPublicKeyInfo, as :func:`public_key_pem` writes)."""
    path = Path(path)
    return parse_public_pem(path.read_bytes(), str(path))


def parse_public_pem(data: bytes, what: str = "the text") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes; :class:`KeyFormatError` says what is wrong."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFormatError(f"public key {what} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"public key {what} is a {type(key).__name__}, not Ed25519")
    return key


def load_public_keys(paths: list[Path]) -> dict[bytes, Ed25519PublicKey]:
    """Map key id to public key for every PEM in ``paths`` (the verifier's trust list)."""
    return {key_id(pub): pub for pub in map(load_public_key, paths)}
