"""Field-protocol drivers and the driver API (see ``drivers.api``)."""
