"""The hardware-in-the-loop suite: the integration behaviours against a rig file (docs/HIL.md)."""
