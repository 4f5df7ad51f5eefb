"""Request and response bodies of the auth API (unknown fields rejected, every size capped)."""

from typing import Annotated, Literal, Self

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
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Email = Annotated[EmailStr, Field(max_length=254)]
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


class MePatch(Input):
    """PATCH /api/auth/me: a new name and/or a new password (with the current one)."""

    name: Name | None = None
    current_password: Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX)] | None = None
    new_password: Password | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
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
