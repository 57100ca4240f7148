"""Online enrollment by claim: send the CSR and signing key, receive the certificate.

Blocking (paho's network thread plus an Event): the CLI calls it directly, the daemon from an
executor. The claim listener is server-authenticated TLS (the seed's CA) with the claim
account's user name and password; see :mod:`provisioning._protocol` for topics and payloads.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from provisioning import _protocol
from provisioning._files import remove_securely
from provisioning._tlserrors import explain_reason_code, explain_tls_failure, harden
from provisioning.certs import CertificateError, CertInfo
from provisioning.identity import StateLayout, ensure_keys, load_identity
from provisioning.install import install_certificate, write_csr
from provisioning.keyring import kid_for, public_pem
from provisioning.seed import load_claim

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Endpoint", "EnrollError", "EnrollResult", "enroll", "exchange", "server_context"]

_log = logging.getLogger("streetgate.provisioning")


class EnrollError(Exception):
    """Enrollment failed; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class EnrollResult:
    """The installed certificate and the kid the registrar recorded."""

    certificate: CertInfo
    kid: str


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the broker for one request/response exchange."""

    host: str
    port: int
    tls: ssl.SSLContext
    client_id: str
    username: str | None = None
    password: str | None = None
    protocol: int = 5


def server_context(ca_file: Path) -> ssl.SSLContext:
    """TLS that checks the broker against the seed's CA; no client certificate."""
    return harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file)))


class _Exchange:
    """Subscribe to the response topic, publish the request, wait for the matching nonce."""

    def __init__(self, request: str, response: str, payload: bytes, nonce: str) -> None:
        self.request, self.response, self.payload, self.nonce = request, response, payload, nonce
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None
        self.error: str | None = None

    def fail(self, message: str) -> None:
        if not self.done.is_set():
            self.error = message
            self.done.set()

    def on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.fail(explain_reason_code(rc.value))
        else:
            client.subscribe(self.response, qos=1)

    def on_subscribe(self, client: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if any(rc.is_failure for rc in codes):
            self.fail(f"broker refused the subscription to {self.response!r}: not authorized")
        else:
            client.publish(self.request, self.payload, qos=1)

    def on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.fail(explain_reason_code(rc.value, topic=self.request))

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            data = _protocol.decode(bytes(msg.payload), ("status",))
        except _protocol.ProtocolError as exc:
            _log.debug("ignoring malformed response on %s: %s", msg.topic, exc)
            return
        if data["nonce"] == self.nonce and not self.done.is_set():
            self.result = data
            self.done.set()

    def on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.fail(f"broker closed the connection ({rc})")


def _client(ep: Endpoint, ex: _Exchange) -> mqtt.Client:
    v5 = ep.protocol == 5
    kwargs: dict[str, Any] = {} if v5 else {"clean_session": True}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=ep.client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kwargs)
    client.tls_set_context(ep.tls)
    if ep.username is not None:
        client.username_pw_set(ep.username, ep.password)
    client.on_connect, client.on_subscribe = ex.on_connect, ex.on_subscribe
    client.on_publish, client.on_message = ex.on_publish, ex.on_message
    client.on_disconnect = ex.on_disconnect
    return client


def exchange(ep: Endpoint, topics: tuple[str, str], message: dict[str, Any], *,
             timeout: float) -> dict[str, Any]:
    """Send one request and return the registrar's ``status = ok`` response.

    Raises:
        EnrollError: connection, TLS, ACL refusal, timeout, or the registrar's refusal.
    """
    nonce = _protocol.new_nonce()
    ex = _Exchange(topics[0], topics[1], _protocol.encode({**message, "nonce": nonce}), nonce)
    client = _client(ep, ex)
    client.connect_timeout = min(timeout, 10.0)
    try:
        client.connect(ep.host, ep.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(f"cannot connect to {ep.host}:{ep.port}: "
                          f"{explain_tls_failure(exc)}") from None
    client.loop_start()
    try:
        if not ex.done.wait(timeout):
            ex.fail(f"no answer on {topics[1]!r} within {timeout:.0f}s: is `streetgate "
                    "registrar run` up? (over MQTT 3.1.1 a request the broker's ACL refuses "
                    "is dropped silently)")
    finally:
        client.disconnect()
        client.loop_stop()
    if ex.error is not None:
        raise EnrollError(ex.error)
    assert ex.result is not None  # noqa: S101 - done is set only with a result or an error
    if ex.result["status"] != "ok":
        raise EnrollError(f"registrar refused: {ex.result.get('error', 'no reason given')}")
    return ex.result


def install_response(state_dir: Path, response: dict[str, Any]) -> CertInfo:
    """Check and install the certificate from a registrar response."""
    cert = response.get("certificate")
    if not isinstance(cert, str):
        raise EnrollError("registrar response carries no certificate")
    try:
        return install_certificate(state_dir, cert.encode())
    except CertificateError as exc:
        raise EnrollError(f"registrar returned an unusable certificate: {exc}") from None


def enroll(state_dir: Path, *, timeout: float | None = None, protocol: int = 5) -> EnrollResult:
    """Run the claim flow once; on success the claim credentials are deleted.

    Raises:
        EnrollError: see :func:`exchange`; also when no claim credentials are stored.
    """
    layout = StateLayout(state_dir)
    ident = load_identity(state_dir)
    claim = load_claim(state_dir)
    if claim is None:
        raise EnrollError(f"no claim credentials in {layout.claim_file}: already enrolled, or "
                          "offline enrollment (streetgate provision csr / install-cert)")
    signing, _tls_key = ensure_keys(state_dir)
    _path, csr = write_csr(state_dir)
    host, port = ident.enroll_address
    ep = Endpoint(host, port, server_context(layout.ca_cert), f"enroll-{ident.gateway_id}",
                  claim.username, claim.password or None, protocol)
    kid = kid_for(signing.public_key())
    message = {"gateway_id": ident.gateway_id, "token": claim.token, "csr": csr.decode(),
               "signing_key": public_pem(signing.public_key()).decode()}
    response = exchange(ep, _protocol.claim_topics(ident.topic_prefix, ident.gateway_id),
                        message, timeout=timeout or claim.timeout)
    info = install_response(state_dir, response)
    if response.get("kid") != kid:
        raise EnrollError(f"registrar recorded kid {response.get('kid')!r}, expected {kid}")
    remove_securely(layout.claim_file)
    _log.info("enrolled %s: certificate %s valid until %s, signing kid %s", ident.gateway_id,
              info.serial, info.not_after, kid)
    return EnrollResult(info, kid)
