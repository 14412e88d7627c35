"""A local Azure Batch service: the REST data plane on loopback, tasks as local processes."""
from .config import EmulatorConfig
from .service import Emulator

__all__ = ["Emulator", "EmulatorConfig"]
