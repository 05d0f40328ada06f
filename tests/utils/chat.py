"""What a person does in the chat, as steps over the fake Bot API server: send a selfie and get
the style picker, press a button, wait for a text or an album."""

from __future__ import annotations

from typing import Any

from telegram_ui.i18n import forms, is_counted, normalize_language, ntranslate, translate
from tests.utils.fake_telegram import ApiCall, FakeTelegram, FakeUser, button_data
from tests.utils.stack import face

# Seconds a tiny-profile job may take on a busy 2-core machine, queue included.
JOB_SECONDS = 150.0


def text(user: FakeUser, key: str, **params: Any) -> str:
    """A catalog string in the user's language (a counted one takes its count as `count`)."""
    if is_counted(key):
        return ntranslate(user.language_code, key, params.pop("count"), **params)
    return translate(user.language_code, key, **params)


def prefix(user: FakeUser, key: str) -> str:
    """The part of a catalog string before its first placeholder (to match formatted text)."""
    return forms(normalize_language(user.language_code))[key][0].split("{")[0]


async def send_selfie(
    tg: FakeTelegram, user: FakeUser, name: str = "man_pose1.png"
) -> dict[str, Any]:
    """Send a fixture selfie; returns the style picker message the bot answers with."""
    since = len(tg.calls)
    tg.send_photo(user, face(name))
    await tg.wait_text(user.id, prefix(user, "selfie.saved"), since=since, within=60)
    call = await tg.wait_for("sendPhoto", chat_id=user.id, since=since, within=60)
    return picker_of(tg, user, call)


def picker_of(tg: FakeTelegram, user: FakeUser, call: ApiCall) -> dict[str, Any]:
    """The bot message a sendPhoto call created (the newest photo message in the chat)."""
    photos = [m for m in tg.bot_messages(user.id) if m.get("photo")]
    assert photos, f"no photo message for {call}"
    picker: dict[str, Any] = photos[-1]
    return picker


async def press(
    tg: FakeTelegram, user: FakeUser, message: dict[str, Any], label: str, *, answer: bool = True
) -> int:
    """Press the button labelled `label` (substring); returns the call index before the press."""
    since = len(tg.calls)
    query_id = tg.press(user, message, button_data(tg.current(message), label))
    if answer:
        await tg.wait_for(
            "answerCallbackQuery", since=since, within=30, callback_query_id=query_id
        )
    return since


async def use_style(tg: FakeTelegram, user: FakeUser, picker: dict[str, Any]) -> ApiCall:
    """Press "Use this style"; returns the status message call (queue position)."""
    since = await press(tg, user, picker, text(user, "btn.use_style"))
    return await tg.wait_text(user.id, prefix(user, "job.queued"), since=since, within=60)


def status_message(tg: FakeTelegram, user: FakeUser, call: ApiCall) -> dict[str, Any]:
    """The status message (with its Cancel button) a job announcement created."""
    wanted = call.params["text"]
    for message in reversed(tg.bot_messages(user.id)):
        if message.get("text") == wanted or _has_cancel(message):
            found: dict[str, Any] = message
            return found
    raise AssertionError(f"no status message for {wanted!r}")


def _has_cancel(message: dict[str, Any]) -> bool:
    markup = message.get("reply_markup") or {}
    return any(
        str(b.get("callback_data", "")).startswith("jc:")
        for row in markup.get("inline_keyboard", [])
        for b in row
    )
