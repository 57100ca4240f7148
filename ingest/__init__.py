"""The platform side of the wire: verify signed batches, store them once, answer queries.

``ingest.verify`` checks batches (signature, key, order, duplicates, gaps, losses),
``ingest.senml`` writes readings as SenML, ``ingest.subscriber`` receives them from a broker,
and ``ingest.service`` stores them in SQLite or PostgreSQL exactly once. The cabinet's daemon
(``gateway``) never imports this package; both import the wire codec from ``gateway``.
"""
