"""The emulator's Azure Resource Manager subset (see docs/emulator-arm.md)."""
from .service import ArmService

__all__ = ["ArmService"]
