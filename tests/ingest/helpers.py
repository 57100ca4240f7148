"""Signed batches made in tests, as a gateway would send them."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffer.types import Gap, Loss, Row
from gateway.batch import encode_batch
from gateway.cose import kid_for, sign1
from ingest.store import Incoming

TS = 1_733_000_000_000


class FakeGateway:
    """Signs batches for one gateway id with its own key; numbers seqs and batches."""

    def __init__(self, gateway_id: str = "cab-1", epoch: int = 1_733_000_000,
                 key: Ed25519PrivateKey | None = None) -> None:
        self.id = gateway_id
        self.epoch = epoch
        self.key = key or Ed25519PrivateKey.generate()
        self.kid = kid_for(self.key.public_key())
        self.batch_seq = 0
        self.seq = 0

    def rows(self, n: int, points: int = 3) -> list[Row]:
        out: list[Row] = []
        for _ in range(n):
            self.seq += 1
            i = self.seq
            out.append((i, f"meter-1/p{i % points}", "V", TS + i * 1000, 230.0 + i / 100, 0))
        return out

    def batch(self, rows: list[Row], *, gaps: list[Gap] | None = None,
              losses: list[Loss] | None = None, extra: dict[int, Any] | None = None,
              epoch: int | None = None) -> bytes:
        self.batch_seq += 1
        payload = encode_batch(gateway_id=self.id, epoch=self.epoch if epoch is None else epoch,
                               batch_seq=self.batch_seq, rows=rows, gaps=gaps or (),
                               losses=losses or (), extra=extra)
        return sign1(payload, self.key, self.kid)

    def message(self, payload: bytes, topic: str | None = None) -> Incoming:
        return Incoming(topic or f"streetgate/{self.id}/batch", payload, TS)
