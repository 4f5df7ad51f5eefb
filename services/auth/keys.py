"""Signing keys: the key ring read from the environment, its JWKS, a development key generator."""

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.algorithms import RSAAlgorithm
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from common.clock import utcnow
from common.tokens import ALGORITHM, TokenVerifier

RSA_KEY_BITS = 2048


class KeySpec(BaseModel):
    """One AUTH_SIGNING_KEYS entry: kid, private_key (or private_key_pem), retire_after."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kid: str = Field(min_length=1, max_length=64)
    private_key: str = Field(min_length=1)
    retire_after: AwareDatetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _pem_alias(cls, data: Any) -> Any:
        # deploy/k8s/secret.example.yaml spells the field private_key_pem.
        if isinstance(data, dict) and "private_key_pem" in data and "private_key" not in data:
            data = dict(data)
            data["private_key"] = data.pop("private_key_pem")
        return data


_SPECS = TypeAdapter(list[KeySpec])


@dataclass(frozen=True)
class SigningKey:
    """A private RSA key with its id; previous keys carry the time they leave the JWKS."""

    kid: str
    private_key: rsa.RSAPrivateKey
    retire_after: datetime | None = None

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK, pinned to the one algorithm verifiers accept."""
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def pem(self) -> str:
        """PKCS#8 PEM of the private key (for AUTH_SIGNING_KEYS or the dev key record)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()


@dataclass(frozen=True)
class KeyRing:
    """The current signing key and the previous ones still published."""

    current: SigningKey
    previous: tuple[SigningKey, ...] = ()

    def all(self) -> list[SigningKey]:
        """Every configured key, retired or not."""
        return [self.current, *self.previous]

    def published(self, now: datetime) -> list[SigningKey]:
        """Keys whose tokens may still be alive: the current one, previous ones not yet retired."""
        alive = [k for k in self.previous if k.retire_after is None or k.retire_after > now]
        return [self.current, *alive]

    def jwks(self, now: datetime) -> dict[str, Any]:
        """The JSON Web Key Set served at /.well-known/jwks.json."""
        return {"keys": [key.public_jwk() for key in self.published(now)]}

    def verifier(self, *, issuer: str, audience: str) -> TokenVerifier:
        """A verifier for this service's own checks; no HTTP round trip to itself."""
        return TokenVerifier(_RingKeys(self), issuer=issuer, audience=audience)


class _RingKeys:
    """The ring as a verification key source: parsed once, retired keys dropped as time passes."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._keys = {key.kid: PyJWK(key.public_jwk(), algorithm=ALGORITHM) for key in ring.all()}

    async def key(self, kid: str) -> PyJWK | None:
        """The public key with this id while it is published."""
        published = {key.kid for key in self._ring.published(utcnow())}
        return self._keys.get(kid) if kid in published else None


def generate_key(kid: str | None = None) -> SigningKey:
    """A fresh RSA key (development default and tests)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return SigningKey(kid or f"dev-{uuid.uuid4().hex[:12]}", private)


def load_key(kid: str, pem: str, retire_after: datetime | None = None) -> SigningKey:
    """Parse a PEM private key; only RSA of at least 2048 bits is accepted."""
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(private, rsa.RSAPrivateKey) or private.key_size < RSA_KEY_BITS:
        raise ValueError(f"signing key {kid!r} must be an RSA key of at least {RSA_KEY_BITS} bits")
    return SigningKey(kid, private, retire_after)


def parse_key_ring(raw: str) -> KeyRing:
    """Build the ring from AUTH_SIGNING_KEYS: a JSON list, the first entry signs."""
    specs = _SPECS.validate_json(raw)
    if not specs:
        raise ValueError("AUTH_SIGNING_KEYS holds no key")
    if len({spec.kid for spec in specs}) != len(specs):
        raise ValueError("AUTH_SIGNING_KEYS has duplicate kids")
    keys = [load_key(s.kid, s.private_key, s.retire_after) for s in specs]
    return KeyRing(keys[0], tuple(keys[1:]))
