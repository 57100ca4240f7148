"""The SQLite reading buffer: append, group commit, lease, ack/release, size cap with gaps."""

from buffer.store import DriverState, Lease, Store, StoreError, StoreStats
from buffer.types import Gap, Row

__all__ = ["DriverState", "Gap", "Lease", "Row", "Store", "StoreError", "StoreStats"]
