"""mykey: the event-sourced core of a MyKey ID management platform."""

__version__ = "0.1.0"
