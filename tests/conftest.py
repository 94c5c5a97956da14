"""Shared fixtures and hypothesis settings."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "mykey", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mykey"))


@pytest.fixture(params=["native", "pure"])
def framing_impl(request) -> str:
    """Run a test against the Cython framing and its pure-Python twin (the native one must be built)."""
    return request.param
