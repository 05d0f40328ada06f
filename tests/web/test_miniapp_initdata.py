"""Init data validated exactly as Telegram documents it: HMAC-SHA256 of the sorted
data-check-string under HMAC-SHA256("WebAppData", bot token), a fresh auth_date, a user."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qsl, urlencode

import pytest

from web.miniapp import initdata
from web.miniapp.initdata import InvalidInitData

TOKEN = "123456:TEST-token"
NOW = 1_765_000_000
USER = {"id": 4242, "first_name": "Ada", "username": "ada", "language_code": "ru"}


def telegram_hash(fields: dict[str, str], token: str) -> str:
    """The documented algorithm, written out here independently of the module under test."""
    secret = hmac.new(b"WebAppData", token.encode(), hashlib.sha256).digest()
    check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "hash")
    return hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()


def launch(fields: dict[str, str], token: str = TOKEN) -> str:
    return urlencode({**fields, "hash": telegram_hash(fields, token)})


def fields(**extra: str) -> dict[str, str]:
    return {
        "query_id": "AAHdF6IQAAAAAN0XohDhrOrc",
        "user": json.dumps(USER, separators=(",", ":")),
        "auth_date": str(NOW - 60),
        "signature": "ed25519-signature-also-covered-by-the-hash",
        **extra,
    }


class TestValidate:
    def test_valid_init_data_names_its_user(self) -> None:
        data = initdata.validate(launch(fields()), TOKEN, max_age=86400, now=NOW)
        assert data.user_id == 4242
        assert data.first_name == "Ada"
        assert data.username == "ada"
        assert data.language_code == "ru"
        assert data.auth_date == NOW - 60

    def test_build_matches_telegram(self) -> None:
        raw = initdata.build(TOKEN, USER, auth_date=NOW)
        parsed = dict(parse_qsl(raw))
        assert parsed["hash"] == telegram_hash(parsed, TOKEN)
        assert initdata.validate(raw, TOKEN, max_age=60, now=NOW).user_id == 4242

    def test_forged_hash_is_refused(self) -> None:
        good = fields()
        forged = urlencode({**good, "hash": "0" * 64})
        with pytest.raises(InvalidInitData):
            initdata.validate(forged, TOKEN, max_age=86400, now=NOW)

    def test_changed_field_breaks_the_hash(self) -> None:
        good = dict(parse_qsl(launch(fields())))
        good["user"] = good["user"].replace("4242", "4243")
        with pytest.raises(InvalidInitData, match="signature"):
            initdata.validate(urlencode(good), TOKEN, max_age=86400, now=NOW)

    def test_another_bots_token_is_refused(self) -> None:
        with pytest.raises(InvalidInitData):
            initdata.validate(launch(fields(), "999:OTHER"), TOKEN, max_age=86400, now=NOW)

    def test_stale_auth_date_is_refused(self) -> None:
        old = launch(fields(auth_date=str(NOW - 86401)))
        with pytest.raises(InvalidInitData, match="expired"):
            initdata.validate(old, TOKEN, max_age=86400, now=NOW)
        # The same data within the allowed age passes.
        assert initdata.validate(old, TOKEN, max_age=86402, now=NOW).user_id == 4242

    def test_future_auth_date_is_refused(self) -> None:
        with pytest.raises(InvalidInitData, match="future"):
            initdata.validate(
                launch(fields(auth_date=str(NOW + 3600))), TOKEN, max_age=86400, now=NOW
            )

    def test_missing_user_is_refused(self) -> None:
        no_user = fields()
        del no_user["user"]
        with pytest.raises(InvalidInitData, match="user"):
            initdata.validate(launch(no_user), TOKEN, max_age=86400, now=NOW)

    @pytest.mark.parametrize(
        "user", ['{"first_name":"x"}', '{"id":"4242"}', '{"id":true}', "[]", "not json"]
    )
    def test_user_without_a_numeric_id_is_refused(self, user: str) -> None:
        with pytest.raises(InvalidInitData):
            initdata.validate(launch(fields(user=user)), TOKEN, max_age=86400, now=NOW)

    def test_missing_auth_date_or_hash_is_refused(self) -> None:
        no_date = fields()
        del no_date["auth_date"]
        with pytest.raises(InvalidInitData):
            initdata.validate(launch(no_date), TOKEN, max_age=86400, now=NOW)
        with pytest.raises(InvalidInitData):
            initdata.validate(urlencode(fields()), TOKEN, max_age=86400, now=NOW)

    @pytest.mark.parametrize("raw", ["", "a", "hash", "x=1&x=2", "%zz=1", "a" * 9000])
    def test_malformed_init_data_is_refused(self, raw: str) -> None:
        with pytest.raises(InvalidInitData):
            initdata.validate(raw, TOKEN, max_age=86400, now=NOW)

    def test_repeated_field_is_refused_even_when_signed(self) -> None:
        good = launch(fields())
        with pytest.raises(InvalidInitData, match="repeated"):
            initdata.validate(good + "&auth_date=1", TOKEN, max_age=86400, now=NOW)

    def test_hash_is_compared_in_constant_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        seen: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            seen.append((a, b))
            return real(a, b)

        monkeypatch.setattr(initdata.hmac, "compare_digest", spy)
        initdata.validate(launch(fields()), TOKEN, max_age=86400, now=NOW)
        assert seen
