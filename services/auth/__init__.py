"""Auth service: accounts, argon2id passwords, RS256 access tokens, rotating refresh tokens, JWKS.

HTTP (full public paths, forwarded unchanged by the gateway):
  POST /api/auth/register · /login · /refresh · /logout · /logout-all
  GET|PATCH /api/auth/me · POST /api/auth/password-reset (202 always) · /password-reset/confirm
  GET /.well-known/jwks.json · /livez · /readyz
Events (users topic, via the single-document outbox and an in-process relay):
  user.registered.v1 · user.password_reset_requested.v1 · user.sessions_revoked.v1
Secrets: AUTH_SIGNING_KEYS (JSON list, first entry signs); required when environment=production.
"""
