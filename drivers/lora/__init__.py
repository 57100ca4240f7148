"""LoRa: a concentrator's packet forwarder (GWMP) and UART modules, LoRaWAN 1.0.x ABP uplinks."""

from drivers.lora.forwarder import LoraForwarderDriver
from drivers.lora.modem import LoraModemDriver

__all__ = ["LoraForwarderDriver", "LoraModemDriver"]
