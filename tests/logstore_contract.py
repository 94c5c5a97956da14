"""Moved: the LogStore contract is mykey.log.contract. This name remains only for test modules not yet updated."""

from mykey.log.contract import ACTOR, LogStoreContract, svc

__all__ = ["ACTOR", "LogStoreContract", "svc"]
