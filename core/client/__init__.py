"""The terminal side: code that runs on a terminal's machine, never on the platform.

A terminal makes its own Ed25519 key pair (``mykey terminal keygen``), keeps the
private key, and hands only the public key to the platform operator, who enrols it
(``mykey terminal enrol BUSINESS --public-key FILE.pub``). It then signs
authentication messages with the private key. This package may use the message
format of ``mykey.auth`` but never the engine, the index or a data directory.
"""
