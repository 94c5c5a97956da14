"""Client side of the platform: what a terminal (or a person) runs to talk to a mykey gateway."""
