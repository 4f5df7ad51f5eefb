"""The revocation rule: named sessions, user-wide cut-offs exact to the ms, fail closed."""

from datetime import UTC, datetime, timedelta

import pytest

from common.events import SessionsRevoked
from common.problems import ProblemError
from common.revocations import KEEP_MS, RevocationList, cut_off_ms
from common.tokens import (
    AccessClaims,
    RevocationsUnknownError,
    epoch_ms,
    session_started_ms,
    sign_access_token,
    verify_bearer,
)
from tests.support.tokens import SigningKey

CUT = datetime(2026, 12, 2, 17, 0, 0, 250_000, tzinfo=UTC)  # 250 ms into its second
CUT_MS = epoch_ms(CUT)
KEY = SigningKey.generate()


def claims(*, began_ms: int | None, iat: int, sub: str = "u1", sid: str = "s1") -> AccessClaims:
    return AccessClaims(
        iss="i", aud="a", sub=sub, exp=iat + 900, iat=iat, nbf=iat, jti="j", sid=sid, sst=began_ms
    )


def revoked(*sids: str, before: datetime = CUT, user: str = "u1") -> SessionsRevoked:
    return SessionsRevoked(
        user_id=user, session_ids=sids, revoked_before=before, reason="logout_all"
    )


def known(*events: SessionsRevoked) -> RevocationList:
    revocations = RevocationList()
    for event in events:
        revocations.record(event, CUT_MS)
    revocations.caught_up = True
    return revocations


def test_an_old_session_refreshed_in_the_cut_off_second_is_refused() -> None:
    # Refreshed 1 ms before the cut-off: same whole second as the cut-off, session older.
    refreshed = claims(began_ms=CUT_MS - 3_600_000, iat=CUT_MS // 1000)
    assert known(revoked()).refuses(refreshed)


def test_a_session_begun_one_ms_before_the_cut_off_is_refused_and_at_it_is_not() -> None:
    revocations = known(revoked())
    assert revocations.refuses(claims(began_ms=CUT_MS - 1, iat=CUT_MS // 1000))
    assert not revocations.refuses(claims(began_ms=CUT_MS, iat=CUT_MS // 1000))
    assert not revocations.refuses(claims(began_ms=CUT_MS + 1, iat=CUT_MS // 1000))


def test_a_token_without_the_session_claim_is_judged_by_its_iat_second_and_fails_closed() -> None:
    revocations = known(revoked())
    same_second = claims(began_ms=None, iat=CUT_MS // 1000)  # issued before or after: unknown
    next_second = claims(began_ms=None, iat=CUT_MS // 1000 + 1)
    assert session_started_ms(same_second) == CUT_MS // 1000 * 1000
    assert revocations.refuses(same_second)
    assert not revocations.refuses(next_second)


def test_a_named_session_is_refused_and_only_that_one() -> None:
    revocations = known(revoked("s1"))
    assert revocations.refuses(claims(began_ms=CUT_MS + 10_000, iat=CUT_MS // 1000 + 10))
    assert not revocations.refuses(claims(began_ms=0, iat=CUT_MS // 1000, sid="s2"))


def test_other_users_are_untouched() -> None:
    revocations = known(revoked())
    assert not revocations.refuses(claims(began_ms=0, iat=CUT_MS // 1000, sub="u2"))


def test_a_cut_off_only_moves_forward_when_events_are_replayed_out_of_order() -> None:
    later = revoked(before=CUT + timedelta(seconds=5))
    revocations = known(later, revoked())
    assert revocations.refuses(claims(began_ms=CUT_MS + 4_000, iat=CUT_MS // 1000 + 4))


def test_a_cut_off_finer_than_a_ms_is_rounded_up() -> None:
    fine = revoked(before=CUT + timedelta(microseconds=400))
    assert cut_off_ms(fine) == CUT_MS + 1
    assert known(fine).refuses(claims(began_ms=CUT_MS, iat=CUT_MS // 1000))


def test_entries_are_forgotten_once_every_token_they_cover_has_expired() -> None:
    revocations = known(revoked(), revoked("s9"))
    assert len(revocations) == 2
    revocations.prune(CUT_MS + KEEP_MS - 1)
    assert len(revocations) == 2
    revocations.prune(CUT_MS + KEEP_MS)
    assert len(revocations) == 0
    stale = RevocationList()
    stale.record(revoked(), CUT_MS + KEEP_MS)
    assert len(stale) == 0


def test_before_catch_up_no_token_is_judged() -> None:
    with pytest.raises(RevocationsUnknownError):
        RevocationList().refuses(claims(began_ms=CUT_MS, iat=CUT_MS // 1000))


async def test_verify_bearer_401_when_revoked_503_with_retry_after_before_catch_up() -> None:
    token, _ = KEY.mint("u1", session_id="s1")
    header = f"Bearer {token}"
    with pytest.raises(ProblemError) as refused:
        await verify_bearer(KEY.verifier(), known(revoked("s1")), header)
    assert refused.value.status == 401
    with pytest.raises(ProblemError) as unknown:
        await verify_bearer(KEY.verifier(), RevocationList(), header)
    assert unknown.value.status == 503
    assert "Retry-After" in unknown.value.headers
    assert (await verify_bearer(KEY.verifier(), known(), header)).sub == "u1"


def test_signed_tokens_name_when_their_session_began_to_the_ms() -> None:
    began = datetime(2026, 12, 2, 16, 0, 0, 123_999, tzinfo=UTC)
    _, signed = sign_access_token(
        KEY.private_key,
        KEY.kid,
        issuer="i",
        audience="a",
        subject="u1",
        session_id="s1",
        ttl_s=900,
        now=CUT.timestamp(),
        session_started=began,
    )
    assert signed.sst == epoch_ms(began) == 1_796_227_200_123
    assert signed.iat == int(CUT.timestamp())
