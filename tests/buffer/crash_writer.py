"""Appends and commits until killed, printing what is known to be on disk (for test_recovery).

Lines: ``commit <last_seq> <batch_seq>`` after a commit returned; ``acking <first> <last>``
before an ack and ``acked`` after it returned.
"""

from __future__ import annotations

import random
import sys

from buffer import Store
from tests.buffer.helpers import readings


def main() -> None:
    store = Store(sys.argv[1], synchronous=sys.argv[2])  # type: ignore[arg-type]
    rng = random.Random(int(sys.argv[3]))
    print("ready", store.epoch, flush=True)
    start = 0
    while True:
        n = rng.randint(1, 400)
        store.append(readings(n, start=start))
        start += n
        store.commit()
        print("commit", store.last_seq, store.next_batch_seq(), flush=True)
        if rng.random() < 0.2:
            lease = store.lease(rng.randint(1, 300))
            if lease is not None and lease.first_seq is not None:
                print("acking", lease.first_seq, lease.last_seq, flush=True)
                store.ack(lease)
                print("acked", flush=True)


if __name__ == "__main__":
    main()
