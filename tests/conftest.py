"""Shared fixtures and hypothesis settings."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

pytest.register_assert_rewrite("mykey.log.contract")
pytest_plugins = ["tests.nats_fixtures"]  # real nats-servers for the JetStream log's tests

settings.register_profile(
    "mykey", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mykey"))


@pytest.fixture(params=["native", "pure"])
def framing_impl(request) -> str:
    """Run a test against the Cython framing and its pure-Python twin (the native one must be built)."""
    return request.param


@pytest.fixture(params=["native", "pure"])
def binding(request):
    """The LMDB binding under test: the Cython module or its py-lmdb twin."""
    from mykey.index.binding import binding_by_name

    return binding_by_name(request.param)


class Pki:
    """A throwaway root and intermediate CA, built once per test session (keys are slow)."""

    def __init__(self) -> None:
        from mykey_dev.pki import ThrowawayCA

        self.root = ThrowawayCA.create("test root")
        self.inter = self.root.intermediate("test user CA")
        self.other = ThrowawayCA.create("untrusted root")
        self._rsa_user = None

    def user(self, **kw):
        return self.inter.issue_user(**kw)

    def chain(self, cred) -> bytes:
        return cred.cert_pem() + self.inter.cert_pem()

    def rsa_user(self):
        if self._rsa_user is None:
            self._rsa_user = self.inter.issue_user(key_type="rsa")
        return self._rsa_user


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki()


@pytest.fixture
def engine(tmp_path, binding, pki):
    """A fresh Engine (with the audit trail) trusting the session's root and intermediate."""
    from mykey.engine import Engine

    e = Engine.open(tmp_path / "data", binding=binding)
    e.add_trust_anchor(pki.root.cert_pem())
    e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
    yield e
    e.close()


def create_user(engine, pki, cred=None, requested_id=None):
    """Create a MyKey ID for a fresh (or given) user credential; returns (mykey_id, cred)."""
    cred = cred or pki.user()
    challenge = engine.new_challenge()
    return engine.create_mykey(pki.chain(cred), cred.sign(challenge), challenge, requested_id), cred


def link_card(engine, pki, cred, business_id, service_id, **kw):
    """Link a service ID with the holder's card, as a terminal or the CLI relays it; returns its status."""
    challenge = engine.link_challenge(business_id, service_id)
    return engine.link_with_card(business_id, service_id, pki.chain(cred), cred.sign(challenge), challenge, **kw)


def engine_resolver(engine):
    """A Resolver (the gateway's read path) over the engine's own index environment.

    LMDB allows one open of an environment per process, so a test process resolving
    what its engine wrote shares the engine's; close the resolver before the engine.
    """
    from mykey.index.resolver import Resolver

    return Resolver(engine.index.env, engine.index.dbs, owns_env=False, binding=engine.index.binding)


def engine_authenticator(engine, resolver):
    """Terminal authentication as a gateway does it: a resolver and the shared nonce record."""
    from mykey.auth.terminals import TerminalAuthenticator, open_nonce_store

    return TerminalAuthenticator(resolver, open_nonce_store(engine.data, engine.index.binding))
