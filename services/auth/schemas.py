"""Request and response bodies of the auth API (unknown fields rejected, every size capped)."""

from typing import Annotated, Any, Literal, Self

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from services.auth.domain import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    PolicyError,
    check_password,
    normalize_email,
)

REFRESH_COOKIE = "taskbus_refresh"
COOKIE_PATH = "/api/auth"
UNAUTHORIZED = "authentication failed"
Password = Annotated[str, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
# Trimmed, so some character must be no whitespace (the contract's pattern says so).
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(json_schema_extra={"pattern": r"\S"}),
]


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" for c in word)


# email-validator refuses special-use domains (RFC 6761): the contract says so, portably (no
# inline flags), and a generated address ending in .test is known to be refused.
_SPECIAL_USE = "|".join(_any_case(name) for name in SPECIAL_USE_DOMAIN_NAMES)
Email = Annotated[
    EmailStr,
    Field(max_length=254, json_schema_extra={"not": {"pattern": f"[@.]({_SPECIAL_USE})$"}}),
]
OpaqueToken = Annotated[str, Field(min_length=1, max_length=200)]


class Input(BaseModel):
    """Base of request bodies: unknown fields are an error, strings are trimmed of nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterIn(Input):
    """POST /api/auth/register."""

    email: Email
    password: Password
    name: Name

    @field_validator("password")
    @classmethod
    def _not_the_email(cls, password: str, info: ValidationInfo) -> str:
        email = info.data.get("email")
        if email:
            try:
                check_password(password, normalize_email(email))
            except PolicyError as exc:
                raise ValueError(exc.message) from exc
        return password


class LoginIn(Input):
    """POST /api/auth/login."""

    email: Annotated[str, Field(min_length=1, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX)]


class RefreshIn(Input):
    """POST /api/auth/refresh and /logout: the token, unless the cookie carries it."""

    refresh_token: OpaqueToken | None = None


# What _consistent enforces, in the contract: a name, or a new password with the current one.
_ME_PATCH_SHAPES = {
    "anyOf": [
        {"required": ["new_password", "current_password"]},
        # {"not": {}} (nothing is valid: the field must be absent), not the boolean schema
        # false, which client generators do not read.
        {"required": ["name"], "properties": {"new_password": {"not": {}}}},
    ]
}


def _me_patch_schema(schema: dict[str, Any]) -> None:
    schema.update(_ME_PATCH_SHAPES)
    for field in schema["properties"].values():
        field.pop("default", None)  # absent, never null


class MePatch(Input):
    """PATCH /api/auth/me: a new name and/or a new password (with the current one)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_me_patch_schema)
    # Absent means unchanged; null is refused (below) and so not in the schema.
    name: Name | SkipJsonSchema[None] = None
    current_password: (
        Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX)] | SkipJsonSchema[None]
    ) = None
    new_password: Password | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        nulls = sorted(f for f in self.model_fields_set if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"may not be null: {', '.join(nulls)}")
        if self.name is None and self.new_password is None:
            raise ValueError("nothing to change: give name or new_password")
        if self.new_password is not None and self.current_password is None:
            raise ValueError("current_password is required to set new_password")
        return self


class ResetIn(Input):
    """POST /api/auth/password-reset."""

    email: Email


class ResetConfirmIn(Input):
    """POST /api/auth/password-reset/confirm."""

    token: OpaqueToken
    new_password: Password


class UserOut(BaseModel):
    """An account as its owner sees it."""

    id: str
    email: str
    name: str
    created_at: AwareDatetime


class TokenPair(BaseModel):
    """A fresh access token and the refresh token that renews it."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name
    expires_in: int
    refresh_token: str
    session_id: str


class AuthOut(TokenPair):
    """A token pair with the account it belongs to."""

    user: UserOut


class MeUpdated(BaseModel):
    """PATCH /me: the account; after a password change, the caller's replacement session."""

    user: UserOut
    tokens: TokenPair | None = None


class Accepted(BaseModel):
    """202 body of a password-reset request (the same whether or not the account exists)."""

    detail: str = "if the account exists, a reset link is on its way"
