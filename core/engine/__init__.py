"""The write side: every platform flow as a validated command (``from mykey.engine import Engine``)."""

from .engine import (
    CrlReport,
    Engine,
    FeedItem,
    MyKeyView,
)

__all__ = ["CrlReport", "Engine", "FeedItem", "MyKeyView"]
