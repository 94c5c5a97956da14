"""Development tooling for mykey: a throwaway CA, the demo, the benchmark command.

Not part of the runtime package: a gateway deployment does not need it.
"""
