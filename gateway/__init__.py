"""The streetgate daemon core: config, buffer-to-uplink pipeline, batches, verifier, CLI."""

__version__ = "0.1.0"
