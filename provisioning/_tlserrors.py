"""TLS and broker-refusal failures turned into messages a technician can act on.

Every TLS failure of the uplink or the enrollment client goes through
:func:`explain_tls_failure`; every MQTT refusal through :func:`explain_reason_code`::

    BaseException / str
     ├── ssl.SSLCertVerificationError   the gateway does not trust the broker
     ├── ssl.SSLError with an alert     the broker rejected the gateway certificate
     │     (certificate expired / revoked / unknown ca / certificate required)
     ├── EOF or reset after handshake   TLS 1.3: the broker's verdict comes without an alert
     ├── FileNotFoundError              not provisioned (a TLS file is missing)
     └── ConnectionRefusedError         nothing listens at the broker address

Why TLS 1.2 by default (:func:`client_tls_context`): in TLS 1.3 the server checks the client
certificate after the client has finished its handshake (RFC 8446 §4.4.2 and §2), so a
rejection shows up later as a bare EOF; mosquitto 2.0 often sends no alert at all then. In
TLS 1.2 the verdict is part of the handshake (RFC 5246 §7.4.6, §7.2.2), so ``connect()``
raises with the alert and the daemon can say *why* (expired, revoked, foreign CA).
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from cryptography import x509

from provisioning.certs import CertificateError, check_certificate, load_certificates, load_tls_key

if TYPE_CHECKING:
    import datetime as dt

    from provisioning.identity import TlsPaths

__all__ = [
    "client_tls_context",
    "explain_reason_code",
    "explain_tls_failure",
    "harden",
    "local_certificate_problem",
    "probe_broker",
]

_RENEW = "renew it with `streetgate provision rotate --tls` (or re-enroll)"

#: (text in the OpenSSL error, explanation). The alert names are RFC 8446 §6.2 / RFC 5246 §7.2.2.
_ALERTS: tuple[tuple[str, str], ...] = (
    ("alert certificate expired",
     f"the broker rejected this gateway's certificate: it has expired; {_RENEW}"),
    ("alert certificate revoked",
     ("the broker rejected this gateway's certificate: it is revoked (on the platform's CRL); "
     "the gateway must be enrolled again with a new claim token from the platform operator")),
    ("alert unknown ca",
     ("the broker does not trust the CA that issued this gateway's certificate (foreign CA): "
     "the certificate belongs to another fleet; enroll the gateway against this broker's CA")),
    ("alert certificate required",
     ("the broker requires a client certificate and none was sent: is the gateway provisioned? "
     "(`streetgate provision status`)")),
    ("alert handshake failure",
     ("TLS handshake refused by the broker: no client certificate or no common cipher; "
     "check `streetgate provision status`")),
    ("alert bad certificate",
     "the broker rejected this gateway's certificate as malformed or unusable; re-enroll"),
    ("alert certificate unknown",
     "the broker rejected this gateway's certificate; check the broker log for the reason"),
    ("alert unsupported certificate",
     "the broker rejected this gateway's certificate type or key usage; re-enroll"),
    ("alert protocol version",
     "the broker does not accept this TLS version; it must offer TLS 1.2"),
    ("key values mismatch",
     ("the TLS key does not match the certificate (client.key / client.crt belong to different "
     "keys); install the certificate issued for this key or re-enroll")),
)

_UNTRUSTED = ("the broker's certificate does not chain to a CA in this gateway's ca.crt; wrong "
              "broker address or wrong CA in the seed")
_VERIFY: tuple[tuple[str, str], ...] = (
    ("hostname mismatch", ("the broker's certificate does not name the address in the "
                          "configuration (host name mismatch); check `broker` in the seed")),
    ("ip address mismatch", ("the broker's certificate does not name the address in the "
                            "configuration (IP address mismatch); check `broker` in the seed")),
    ("certificate has expired", ("the broker's own certificate has expired; the platform "
                                "operator must renew it")),
    ("unable to get local issuer", _UNTRUSTED),
    ("self-signed certificate", _UNTRUSTED),
)

_EOF = ("eof occurred in violation of protocol", "unexpected eof", "connection reset",
        "broken pipe")

#: MQTT 5 reason codes (MQTT 5.0 §2.4) that mean a refusal rather than a transient failure.
_REASONS = {
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x8A: "server unavailable",
    0x8C: "bad authentication method",
    0x90: "topic name invalid",
    0x97: "quota exceeded",
}


def _text(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    detail = " ".join(str(a) for a in getattr(exc, "args", ()) if a is not None)
    return f"{type(exc).__name__}: {detail or exc}"


def local_certificate_problem(paths: TlsPaths, now: dt.datetime | None = None) -> str | None:
    """What is wrong with the installed certificate as seen locally, or ``None``."""
    try:
        cert = x509.load_pem_x509_certificate(paths.cert_file.read_bytes())
        cas = load_certificates(paths.ca_file.read_bytes(), source=str(paths.ca_file))
        key = load_tls_key(paths.key_file)
        check_certificate(cert, key, cas, now=now)
    except FileNotFoundError as exc:
        return f"{exc.filename}: missing; the gateway is not provisioned"
    except (CertificateError, ValueError) as exc:
        return f"{paths.cert_file}: {exc}"
    return None


def _first(low: str, table: tuple[tuple[str, str], ...]) -> str | None:
    return next((message for needle, message in table if needle in low), None)


def _classify(exc: BaseException | str, text: str) -> tuple[str, bool]:
    """(message, whether a local look at the certificate can add to it)."""
    low = text.lower()
    alert = _first(low, _ALERTS)
    if alert is not None:
        return alert, True
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in low:
        return _first(low, _VERIFY) or f"cannot verify the broker's certificate: {text}", False
    if isinstance(exc, FileNotFoundError):
        return (f"{exc.filename}: missing; the gateway is not provisioned "
                "(`streetgate provision status`)"), False
    if isinstance(exc, ConnectionRefusedError) or "connection refused" in low:
        return ("nothing accepts connections at the broker address "
                "(broker down or wrong port)"), False
    if any(needle in low for needle in _EOF):
        return ("the broker closed the connection during or right after the TLS handshake: it "
                "most likely rejected this gateway's certificate (expired, revoked or from a "
                "foreign CA); see the broker log"), True
    return f"TLS connection to the broker failed: {text}", True


def explain_tls_failure(exc: BaseException | str, paths: TlsPaths | None = None, *,
                        now: dt.datetime | None = None) -> str:
    """One clear sentence for a failed TLS connection to the broker.

    With ``paths`` the installed certificate is checked too and what is wrong with it
    (expired, foreign CA, key mismatch) is appended as ``(local check: ...)``.
    """
    message, local_helps = _classify(exc, _text(exc))
    if local_helps and paths is not None:
        local = local_certificate_problem(paths, now)
        if local:
            message += f" (local check: {local})"
    return message


def explain_reason_code(code: int, *, topic: str | None = None,
                        gateway_id: str | None = None) -> str:
    """A broker refusal (CONNACK / PUBACK reason code) in words."""
    what = _REASONS.get(code, f"reason code 0x{code:02x}")
    if code == 0x87 and topic is not None:
        own = f"; gateway {gateway_id!r} may only write below its own id" if gateway_id else ""
        return f"broker refused publishing to {topic!r}: not authorized by its ACL{own}"
    if code in (0x86, 0x87):
        # mosquitto 2.0 answers a wrong password with 0x87, not 0x86 (MQTT 5.0 §3.2.2.2).
        return (f"broker refused the login: {what} (wrong user name or password in the seed's "
                "[enrollment], or the account is not allowed)")
    return f"broker refused: {what}"


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails.

    paho-mqtt 2.x ``Client._ssl_wrap_socket`` calls ``do_handshake()`` on a socket it has not
    stored yet, so a refused handshake leaks the socket (ResourceWarning, one fd per retry).
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 or newer, and no leaked socket on a failed handshake (see _ClosingSSLSocket)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


def client_tls_context(paths: TlsPaths, *, max_tls12: bool = True) -> ssl.SSLContext:
    """The uplink's TLS context: verify the broker against ca.crt, present client.crt.

    ``max_tls12`` keeps the broker's certificate verdict inside the handshake (module doc).
    """
    ctx = harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths.ca_file)))
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(paths.cert_file), str(paths.key_file))
    return ctx


def probe_broker(host: str, port: int, paths: TlsPaths, *, timeout: float = 5.0) -> str | None:
    """Do one TLS 1.2 handshake with the client certificate; ``None`` if accepted.

    Blocking: call it from an executor. Useful after a bare EOF to learn the broker's verdict.
    """
    try:
        ctx = client_tls_context(paths, max_tls12=True)
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.do_handshake()
    except (OSError, ssl.SSLError) as exc:
        return explain_tls_failure(exc, paths)
    return None
