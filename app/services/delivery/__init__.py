"""Delivery: passes of the engine that send due mail through the relays (see engine.py)."""

from app.services.delivery.engine import DeliveryEngine, PassReport

__all__ = ["DeliveryEngine", "PassReport"]
