"""Catalog completeness, callback data strictness, keyboards the workers import, webhooks."""

from __future__ import annotations

import ast
import dataclasses
import re
import string
from pathlib import Path

import pytest
from babel.messages.frontend import CommandLineInterface
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po
from telegram import Update

from bot.app import ADMIN_COMMANDS, MENU_COMMANDS, build_application
from bot.handlers.payments import PAYMENT_COMMANDS
from core import errors as app_errors
from core.errors import SelfieRequired
from db.models import BaseModelName, JobKind, JobStatus
from facechain import errors as fc_errors
from telegram_ui import callbacks as cb
from telegram_ui.i18n import (
    LANGUAGES,
    counted_keys,
    forms,
    is_counted,
    ntranslate,
    po_catalog,
    translate,
)
from telegram_ui.keyboards import cancel_job_keyboard, result_keyboard
from tests.bot.conftest import BotHarness
from web.miniapp import routes as miniapp
from web.telegram import process_webhook_update, secret_matches

ROOT = Path(__file__).resolve().parents[2]
# context.t("key", ...), translate(lang, "key", ...), error_text(lang, "code") take literal keys;
# context.nt("key", n, ...) and ntranslate(lang, "key", n, ...) take counted ones.
KEY_SHAPE = re.compile(r"^[a-z0-9_]+\.[a-z0-9_.]+$")
LITERAL_KEY = re.compile(
    r"""(?:\.n?t|\bn?translate)\(\s*(?:[\w.\[\]"]+\s*,\s*)?"([a-z0-9_]+\.[a-z0-9_.]+)\""""
)
PLAIN_KEY = re.compile(
    r"""(?:\.t|\btranslate)\(\s*(?:[\w.\[\]"]+\s*,\s*)?"([a-z0-9_]+\.[a-z0-9_.]+)\""""
)
COUNTED_KEY = re.compile(
    r"""(?:\.nt|\bntranslate)\(\s*(?:[\w.\[\]"]+\s*,\s*)?"([a-z0-9_]+\.[a-z0-9_.]+)\""""
)


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def keys_used_in_code() -> set[str]:
    keys: set[str] = set()
    # In the bot, any string literal shaped like a key of a catalog namespace is a key
    # (this also catches keys chosen into a variable first).
    namespaces = {k.split(".")[0] for k in forms("en")}
    for path in [*(ROOT / "bot").rglob("*.py"), *(ROOT / "telegram_ui").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and KEY_SHAPE.match(node.value)
                and node.value.split(".")[0] in namespaces
            ):
                keys.add(node.value)
    # The workers use task names shaped like keys, so only literal translate() calls count;
    # so does the Mini App (web/miniapp), plus the keys its page shows.
    for path in [*(ROOT / "tasks").rglob("*.py"), *(ROOT / "web" / "miniapp").rglob("*.py")]:
        keys |= set(LITERAL_KEY.findall(path.read_text(encoding="utf-8")))
    keys |= set(miniapp.PAGE_KEYS) | set(miniapp.PAGE_COUNTED_KEYS)
    keys |= {f"miniapp.base.{b.value}" for b in BaseModelName}
    # Keys built at run time from a closed set of values.
    keys |= {f"kind.{k.value}" for k in JobKind}
    keys |= {f"status.{s.value}" for s in JobStatus}
    keys |= {f"cmd.{c}" for c in MENU_COMMANDS}
    keys |= {f"cmd.{c}" for c in PAYMENT_COMMANDS}
    keys |= {f"admin.{op}_{part}" for op in ("ban", "unban") for part in ("usage", "done")}
    return keys


def user_facing_error_codes() -> set[str]:
    codes = set()
    for module in (app_errors, fc_errors):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(
                obj, app_errors.AppError | fc_errors.FaceChainError
            ):
                codes.add(obj.code)
    codes.add(SelfieRequired.code)
    return codes - {"config"}


class TestCatalogs:
    """The gettext catalogs (one .po per language), checked in Babel's terms."""

    def test_same_keys_in_every_language(self) -> None:
        en = set(forms("en"))
        for lang in LANGUAGES:
            assert set(forms(lang)) == en, lang

    def test_same_counted_texts_in_every_language(self) -> None:
        for lang in LANGUAGES:
            counted = {m.id[0] for m in po_catalog(lang) if m.pluralizable}
            assert counted == set(counted_keys()), lang
        assert len(counted_keys()) > 20

    def test_plural_forms_are_babels_cldr_rule(self) -> None:
        for lang in LANGUAGES:
            rule = get_plural(lang)
            assert po_catalog(lang).plural_forms == str(rule), lang
        assert [get_plural(lang).num_plurals for lang in LANGUAGES] == [2, 3, 1]

    def test_every_entry_has_every_form_its_language_needs(self) -> None:
        for lang in LANGUAGES:
            needed = po_catalog(lang).num_plurals
            for key, texts in forms(lang).items():
                assert len(texts) == (needed if is_counted(key) else 1), (lang, key)
                assert all(text.strip() for text in texts), (lang, key)

    def test_same_placeholders_in_every_language_and_form(self) -> None:
        for key, en_texts in forms("en").items():
            expected = placeholders(en_texts[0])
            if is_counted(key):
                # The count is said in every form (Russian's "one" is also 21, 31, ...).
                assert "count" in expected, key
            for lang in LANGUAGES:
                for text in forms(lang)[key]:
                    assert placeholders(text) == expected, (lang, key, text)

    def test_no_fuzzy_or_obsolete_entries(self) -> None:
        # The compiled catalog leaves fuzzy entries out: the text would silently be English.
        for lang in LANGUAGES:
            catalog = po_catalog(lang)
            assert not catalog.fuzzy, lang
            assert [m.id for m in catalog if m.id and m.fuzzy] == [], lang
            assert not catalog.obsolete, lang

    def test_no_compiled_or_json_catalogs_are_kept(self) -> None:
        # The .po files are compiled when first used; a .mo or a JSON file beside them would be
        # a second, stale copy.
        locales = ROOT / "telegram_ui" / "locales"
        leftovers = [
            p.relative_to(locales)
            for p in locales.rglob("*")
            if p.is_file() and p.suffix in (".mo", ".json")
        ]
        assert leftovers == []

    def test_every_key_used_in_code_exists(self) -> None:
        used = keys_used_in_code()
        assert len(used) > 80
        missing = sorted(k for k in used if k not in forms("en"))
        assert missing == []

    def test_no_unused_keys(self) -> None:
        used = keys_used_in_code()
        unused = sorted(k for k in forms("en") if k not in used and not k.startswith("error."))
        assert unused == []

    def test_babel_extraction_finds_exactly_the_catalog(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # `pybabel extract` + `pybabel update` (README) neither drop nor add a key, and say the
        # counted ones with msgid_plural.
        monkeypatch.chdir(ROOT)
        pot = tmp_path / "messages.pot"
        CommandLineInterface().run(["pybabel", "-q", "extract", "-o", str(pot)])
        with pot.open("rb") as fh:
            template = read_po(fh)
        extracted = {(m.id[0] if m.pluralizable else m.id) for m in template if m.id}
        assert extracted == set(forms("en"))
        assert {m.id[0] for m in template if m.pluralizable} == set(counted_keys())

    def test_counted_texts_are_said_with_their_count(self) -> None:
        # A literal key given to t()/translate() is a plain text, one given to nt()/ntranslate()
        # a counted one.
        for path in ROOT.glob("*/**/*.py"):
            if path.parts[len(ROOT.parts)] not in ("bot", "telegram_ui", "tasks", "web"):
                continue
            source = path.read_text(encoding="utf-8")
            for key in PLAIN_KEY.findall(source):
                assert not is_counted(key), (path, key)
            for key in COUNTED_KEY.findall(source):
                assert is_counted(key), (path, key)

    def test_every_error_code_has_a_sentence(self) -> None:
        missing = sorted(c for c in user_facing_error_codes() if f"error.{c}" not in forms("en"))
        assert missing == []

    def test_every_text_formats(self) -> None:
        for lang in LANGUAGES:
            for key, texts in forms(lang).items():
                params = {name: "1" for name in placeholders(texts[0]) - {"count"}}
                if is_counted(key):
                    for count in (1, 2, 5):
                        said = ntranslate(lang, key, count, **params)
                        assert "{" not in said.replace("{}", ""), (lang, key)
                        assert str(count) in said, (lang, key)
                else:
                    assert translate(lang, key, **params)


class TestCallbackData:
    def test_every_payload_round_trips(self) -> None:
        for cls in cb.CallbackData.registry.values():
            values = {
                f.name: (7 if f.type in (int, "int") else "all") for f in dataclasses.fields(cls)
            }
            payload = cls(**values)
            assert cb.parse(payload.pack()) == payload
            assert len(payload.pack().encode()) <= cb.MAX_BYTES

    @pytest.mark.parametrize(
        "data",
        [
            None,
            "",
            "x" * 65,
            "nope:1",
            "jc",
            "jc:",
            "jc:1:1",
            "jc:1.5",
            "jc:+1",
            "jc:0x1",
            "jc:１",
            "sp:All:0",
            "sp:a b:0",
            "sp:all:-1",
            "face:1",
            "lang:e n",
        ],
    )
    def test_forged_data_is_rejected(self, data: str | None) -> None:
        with pytest.raises(cb.BadCallback):
            cb.parse(data)

    def test_unpack_checks_the_kind(self) -> None:
        assert cb.CancelJob.unpack("jc:5") == cb.CancelJob(5)
        with pytest.raises(cb.BadCallback):
            cb.CancelJob.unpack("rm:5")


class TestWorkerKeyboards:
    def test_cancel_keyboard(self) -> None:
        markup = cancel_job_keyboard(12, "ru")
        [[button]] = markup.inline_keyboard
        assert button.callback_data == "jc:12"
        assert button.text == translate("ru", "btn.cancel")

    def test_result_keyboards(self) -> None:
        data = [
            b.callback_data for row in result_keyboard(3, 9, "zh").inline_keyboard for b in row
        ]
        assert data == ["rm:3", "ra:3", "rp:3"]
        data = [
            b.callback_data for row in result_keyboard(3, None, "en").inline_keyboard for b in row
        ]
        assert data == ["rm:3", "ra:3"]


class TestWebhook:
    def test_secret_is_compared_exactly(self) -> None:
        assert secret_matches("s3cret", "s3cret")
        assert not secret_matches("s3cret", "s3cre")
        assert not secret_matches("s3cret", None)
        assert not secret_matches(None, "anything")

    async def test_webhook_update_is_processed(self, harness: BotHarness) -> None:
        from tests.bot.conftest import make_config

        config = make_config(harness.tg, harness.database_url, harness.tmp_path)
        config.telegram.mode = "webhook"
        from tasks.celery_app import create_celery
        from tasks.dispatch import CeleryPublisher

        publisher = CeleryPublisher(create_celery(config), harness.db)
        app = build_application(config, harness.db, harness.blobs, publisher)
        assert app.updater is None
        async with app:
            await app.start()
            try:
                ann = harness.tg.user(9001, "Ann", "ru")
                body = {
                    "update_id": 1,
                    "message": {
                        "message_id": 1,
                        "date": 0,
                        "chat": ann.chat(),
                        "from": ann.to_dict(),
                        "text": "/help",
                        "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
                    },
                }
                update = await process_webhook_update(app, body)
                assert isinstance(update, Update)
                await harness.tg.wait_text(ann.id, "/style")
                assert await process_webhook_update(app, {"nonsense": True}) is None
            finally:
                await app.stop()

    def test_admin_commands_are_not_in_the_public_menu(self) -> None:
        assert not set(ADMIN_COMMANDS) & set(MENU_COMMANDS)
