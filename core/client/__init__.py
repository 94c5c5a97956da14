"""The terminal side: code that runs on a terminal's machine (or a person's), never on the platform.

A terminal makes its own Ed25519 key pair (``mykey terminal keygen``, ``keys``), keeps the
private key, and hands only the public key to the platform operator, who enrols it
(``mykey terminal enrol BUSINESS --public-key FILE.pub``). It then talks to a mykey gateway
over HTTP (``gateway``: the reference client a terminal vendor can embed). This package may
use the message formats of ``mykey.auth`` but never the engine, the index or a data directory.
"""
