"""The problem answers of each auth route, as its OpenAPI `responses=` (common.openapi)."""

from common.openapi import AUTHENTICATED, problems

REGISTER = problems(described={409: "the email is already registered"})
LOGIN = problems(
    described={
        401: "wrong email or password (the same answer for an unknown account)",
        429: "this address backs off on this account, or everywhere (Retry-After <= 300 s)",
    }
)
REFRESH = problems(
    described={401: "the refresh token is missing, spent, expired or revoked (one answer for all)"}
)
LOGOUT = problems(described={401: "neither a valid access token nor a live refresh token"})
SIGNED_IN = problems(*AUTHENTICATED)
UPDATE_ME = problems(
    described={
        401: "missing or invalid access token, or a wrong current_password",
        429: "too many wrong current passwords from this address (Retry-After)",
    }
)
RESET = problems(
    described={
        429: "this address asked for too many resets this hour (Retry-After)",
        503: "too many reset requests in flight (Retry-After)",
    }
)
CONFIRM_RESET = problems(described={401: "the reset token is unknown, used or expired"})
