"""A fake Telegram Bot API server (aiohttp, 127.0.0.1, random port) for offline bot tests.

The real bot talks to it over HTTP through TELEGRAM_API_BASE_URL / TELEGRAM_FILE_BASE_URL.
It implements what the bot calls, records every call, keeps the messages the bot sent (so
tests can press their buttons), serves uploaded files, feeds `getUpdates` long polls from
updates the test injects, and answers 429 or 5xx on demand. Once the bot calls `setWebhook`,
injected updates are POSTed to that URL with its secret token instead, one at a time and in
order, retried while the endpoint fails, as Telegram does.

    async with FakeTelegram() as tg:
        config = ... api_base_url=tg.api_base_url, file_base_url=tg.file_base_url ...
        async with running_bot(build_application(...)):
            ann = tg.user(1001, "Ann", "en")
            tg.send_text(ann, "/start")
            call = await tg.wait_for("sendMessage", chat_id=ann.id)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

logger = logging.getLogger(__name__)

TOKEN = "123456:TEST-token-for-the-fake-api"
# Parameters PTB sends as plain strings; everything else is JSON-encoded by PTB.
STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "callback_query_id",
        "file_id",
        "url",
        "secret_token",
        "parse_mode",
        "inline_message_id",
        "language_code",
        "filename",
        "emoji",
        "action",
        "title",
        "description",
        "payload",
        "currency",
        "pre_checkout_query_id",
        "error_message",
        "telegram_payment_charge_id",
    }
)


@dataclass(frozen=True)
class FakeUser:
    """A Telegram user (their private chat has the same id)."""

    id: int
    first_name: str = "Test"
    language_code: str | None = "en"
    username: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.language_code:
            data["language_code"] = self.language_code
        if self.username:
            data["username"] = self.username
        return data

    def chat(self) -> dict[str, Any]:
        return {"id": self.id, "type": "private", "first_name": self.first_name}


@dataclass
class ApiCall:
    """One request the bot made."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)
    # The HTTP status the fake answered with (200, or an injected/real error).
    status: int = 200

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclass
class Charge:
    """A Stars payment Telegram made for the bot."""

    charge_id: str
    user_id: int
    amount: int
    payload: str
    refunded: bool = False
    date: int = field(default_factory=lambda: int(time.time()))


@dataclass
class StoredFile:
    file_id: str
    unique_id: str
    data: bytes
    path: str


class FakeTelegram:
    """The fake Bot API server; use as an async context manager."""

    def __init__(self, token: str = TOKEN, *, bot_id: int = 777000, username: str = "fc_test_bot"):
        self.token = token
        self.bot = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "FaceChain",
            "username": username,
            "can_join_groups": False,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[ApiCall] = []
        # Each chat's flood schedule (`telegram_ui.flood`), fed with the messages it received:
        # `idle` knows when the bot may still hold a message back for a chat.
        self._flood: dict[int, Any] = {}
        self.files: dict[str, StoredFile] = {}
        # The current state of every message in every chat (edits applied), by (chat, id).
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._query_ids = itertools.count(1)
        self._failures: dict[str, deque[tuple[int, int | None]]] = {}
        # Methods whose calls wait, unanswered, until the gate opens (`hold`), and those calls.
        self._holds: dict[str, asyncio.Event] = {}
        self.held: list[ApiCall] = []
        self._changed = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.delivered_offset = 0
        # Webhook mode: where updates go, with which secret, and what each POST answered.
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhook_statuses: list[int] = []
        # setWebhook's allowed_updates (None: Telegram's default, which includes
        # pre_checkout_query); an update of another type is never sent, as Telegram does.
        self.webhook_allowed: list[str] | None = None
        self.dropped_updates: list[dict[str, Any]] = []
        # getUpdates' allowed_updates; like Telegram, a call without it keeps the last setting.
        self.polling_allowed: list[str] | None = None
        self._webhook_queue: asyncio.Queue[dict[str, Any]] | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        # Telegram Stars: every charge made through `pay` (charge id -> Charge), and the
        # answers to pre-checkout queries by query id.
        self.charges: dict[str, Charge] = {}
        # What getStarTransactions lists, in chronological order (oldest first), as Telegram
        # does: each payment when it is made, each refund when it is made.
        self.star_transactions: list[dict[str, Any]] = []
        self.checkout_answers: dict[str, ApiCall] = {}
        self._charge_ids = itertools.count(1)
        # setChatMenuButton's menu_button (None: never set).
        self.menu_button: Any = None

    # lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Wake pending long polls and shut the server down."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # failures on demand ----------------------------------------------------------------

    def fail_next(
        self, method: str, status: int = 429, *, retry_after: int | None = 1, times: int = 1
    ) -> None:
        """Answer the next `times` calls of `method` with HTTP `status` (429: retry_after)."""
        queue = self._failures.setdefault(method, deque())
        for _ in range(times):
            queue.append((status, retry_after))

    def hold(self, method: str) -> asyncio.Event:
        """Keep every call of `method` unanswered until the returned event is set (a request in
        flight when a process is killed); `held` lists the calls that waited."""
        gate = self._holds[method] = asyncio.Event()
        return gate

    # files -----------------------------------------------------------------------------

    def add_file(self, data: bytes, suffix: str = "jpg") -> StoredFile:
        """Register bytes as a Telegram file (what a user upload becomes)."""
        n = next(self._file_ids)
        file_id = f"FILE{n:06d}"
        stored = StoredFile(file_id, f"U{n:06d}", data, f"files/{file_id}.{suffix}")
        self.files[file_id] = stored
        return stored

    # injecting updates -----------------------------------------------------------------

    def user(
        self,
        user_id: int,
        first_name: str = "Test",
        language_code: str | None = "en",
        username: str | None = None,
    ) -> FakeUser:
        return FakeUser(user_id, first_name, language_code, username)

    def _push(self, update: dict[str, Any]) -> int:
        update_id = next(self._update_ids)
        update["update_id"] = update_id
        if self.webhook_url is not None:
            assert self._webhook_queue is not None
            kind = next(k for k in update if k != "update_id")
            if self.webhook_allowed is not None and kind not in self.webhook_allowed:
                self.dropped_updates.append(update)
                return update_id
            self._webhook_queue.put_nowait(update)
            return update_id
        self._pending.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update_id

    async def _post_updates(self) -> None:
        """Webhook mode: POST each update in order; retry (as Telegram does) until a 2xx."""
        assert self._webhook_queue is not None
        async with aiohttp.ClientSession() as session:
            while True:
                update = await self._webhook_queue.get()
                for attempt in range(30):
                    url, secret = self.webhook_url, self.webhook_secret
                    if url is None:
                        break
                    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
                    try:
                        async with session.post(url, json=update, headers=headers) as response:
                            self.webhook_statuses.append(response.status)
                            if response.status < 300:
                                break
                    except aiohttp.ClientError as exc:
                        logger.info("fake telegram: webhook POST failed: %s", exc)
                        self.webhook_statuses.append(0)
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _user_message(self, user: FakeUser, **content: Any) -> dict[str, Any]:
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": user.chat(),
            "from": user.to_dict(),
            **content,
        }
        self.messages[(user.id, message["message_id"])] = message
        return message

    def send_text(self, user: FakeUser, text: str) -> dict[str, Any]:
        """The user sends text; a leading /command gets its bot_command entity."""
        content: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            command = text.split()[0]
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        message = self._user_message(user, **content)
        self._push({"message": message})
        return message

    def send_photo(
        self, user: FakeUser, data: bytes, *, width: int = 512, height: int = 512
    ) -> dict[str, Any]:
        """The user sends a compressed photo."""
        stored = self.add_file(data)
        size = {
            "file_id": stored.file_id,
            "file_unique_id": stored.unique_id,
            "width": width,
            "height": height,
            "file_size": len(data),
        }
        message = self._user_message(user, photo=[size])
        self._push({"message": message})
        return message

    def send_document(
        self,
        user: FakeUser,
        data: bytes,
        *,
        file_name: str = "selfie.jpg",
        mime_type: str | None = "image/jpeg",
        file_size: int | None = None,
    ) -> dict[str, Any]:
        """The user sends a file (an image "as a file", or anything else)."""
        stored = self.add_file(data, file_name.rsplit(".", 1)[-1] or "bin")
        document: dict[str, Any] = {
            "file_id": stored.file_id,
            "file_unique_id": stored.unique_id,
            "file_name": file_name,
            "file_size": len(data) if file_size is None else file_size,
        }
        if mime_type:
            document["mime_type"] = mime_type
        message = self._user_message(user, document=document)
        self._push({"message": message})
        return message

    def send_sticker(self, user: FakeUser) -> dict[str, Any]:
        stored = self.add_file(b"RIFF....WEBP", "webp")
        sticker = {
            "file_id": stored.file_id,
            "file_unique_id": stored.unique_id,
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": "🙂",
        }
        message = self._user_message(user, sticker=sticker)
        self._push({"message": message})
        return message

    def send_voice(self, user: FakeUser) -> dict[str, Any]:
        stored = self.add_file(b"OggS", "ogg")
        voice = {"file_id": stored.file_id, "file_unique_id": stored.unique_id, "duration": 2}
        message = self._user_message(user, voice=voice)
        self._push({"message": message})
        return message

    def send_raw(self, update: dict[str, Any]) -> int:
        """Inject any update body (update_id is assigned)."""
        return self._push(update)

    def press(self, user: FakeUser, message: dict[str, Any], data: str) -> str:
        """The user presses a button with `data` under `message` (any data: forged is fine)."""
        query_id = f"Q{next(self._query_ids)}"
        current = self.messages.get((message["chat"]["id"], message["message_id"]), message)
        self._push(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user.to_dict(),
                    "chat_instance": f"ci{user.id}",
                    "data": data,
                    "message": current,
                }
            }
        )
        return query_id

    def press_button(self, user: FakeUser, message: dict[str, Any], text: str) -> str:
        """Press the button whose label contains `text` under the current state of `message`."""
        data = button_data(self.current(message), text)
        return self.press(user, message, data)

    # Telegram Stars payments ----------------------------------------------------------

    def pre_checkout(
        self, user: FakeUser, payload: str, total_amount: int, currency: str = "XTR"
    ) -> str:
        """The user pressed Pay on an invoice: Telegram asks the bot (a pre_checkout_query)."""
        query_id = f"PCQ{next(self._query_ids)}"
        self._push(
            {
                "pre_checkout_query": {
                    "id": query_id,
                    "from": user.to_dict(),
                    "currency": currency,
                    "total_amount": total_amount,
                    "invoice_payload": payload,
                }
            }
        )
        return query_id

    def successful_payment(
        self,
        user: FakeUser,
        payload: str,
        total_amount: int,
        charge_id: str | None = None,
        currency: str = "XTR",
    ) -> str:
        """Telegram took the money: the `successful_payment` service message (sent again with
        the same `charge_id`, it is the duplicate update a bot must not credit twice)."""
        if charge_id is None:
            charge_id = f"stxCHARGE{next(self._charge_ids):06d}"
        if charge_id not in self.charges:
            self.add_charge(Charge(charge_id, user.id, total_amount, payload))
        payment = {
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": payload,
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": "",
        }
        self._push({"message": self._user_message(user, successful_payment=payment)})
        return charge_id

    def lost_payment(self, user: FakeUser, payload: str, total_amount: int) -> str:
        """Telegram took the money but the bot never got the `successful_payment` update (the
        process died with it); only getStarTransactions lists it."""
        charge_id = f"stxLOST{next(self._charge_ids):06d}"
        self.add_charge(Charge(charge_id, user.id, total_amount, payload))
        return charge_id

    def add_charge(self, charge: Charge) -> None:
        """A payment Telegram made: kept for refunds and listed by getStarTransactions."""
        self.charges[charge.charge_id] = charge
        self.star_transactions.append(
            {
                "id": charge.charge_id,
                "amount": charge.amount,
                "date": charge.date,
                "source": _star_partner(charge),
            }
        )

    def refund_charge(self, charge_id: str) -> None:
        """Telegram refunds a payment (refundStarPayment, or a refund made outside the bot):
        getStarTransactions lists the refund from now on, as its own, newest entry with the
        payment's id and the user as the receiver. No update is sent (`refunded_payment`)."""
        charge = self.charges[charge_id]
        charge.refunded = True
        self.star_transactions.append(
            {
                "id": charge.charge_id,
                "amount": charge.amount,
                "date": int(time.time()),
                "receiver": _star_partner(charge),
            }
        )

    def refunded_payment(self, user: FakeUser, charge_id: str) -> None:
        """Telegram reports a refund of the charge (the `refunded_payment` service message)."""
        charge = self.charges[charge_id]
        refunded = {
            "currency": "XTR",
            "total_amount": charge.amount,
            "invoice_payload": charge.payload,
            "telegram_payment_charge_id": charge_id,
        }
        self._push({"message": self._user_message(user, refunded_payment=refunded)})

    async def pay(self, user: FakeUser, invoice: ApiCall, *, within: float = 15.0) -> str | None:
        """The user pays an invoice the bot sent: pre-checkout, then (if the bot said ok) the
        successful payment. The charge id, or None when the bot refused the checkout."""
        payload = str(invoice.params["payload"])
        amount = sum(int(p["amount"]) for p in invoice.params["prices"])
        answer = await self.checkout(user, payload, amount, within=within)
        if not answer.params.get("ok"):
            return None
        return self.successful_payment(user, payload, amount)

    async def checkout(
        self, user: FakeUser, payload: str, amount: int, *, within: float = 15.0
    ) -> ApiCall:
        """Send a pre-checkout query and wait for the bot's answer (Telegram waits 10 s)."""
        query_id = self.pre_checkout(user, payload, amount)
        return await self.wait_for(
            "answerPreCheckoutQuery", within=min(within, 10.0), pre_checkout_query_id=query_id
        )

    # inspecting ------------------------------------------------------------------------

    def current(self, message: dict[str, Any]) -> dict[str, Any]:
        """The latest state of a message (after the bot's edits)."""
        return self.messages[(message["chat"]["id"], message["message_id"])]

    def calls_to(self, method: str, **match: Any) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method and _matches(c, match)]

    def sent_texts(self, chat_id: int) -> list[str]:
        """Texts and captions the bot sent or edited into this chat, in order."""
        out = []
        for call in self.calls:
            if call.chat_id != chat_id or not call.ok:
                continue
            if call.method in ("sendMessage", "editMessageText") and "text" in call.params:
                out.append(str(call.params["text"]))
            elif call.method in ("sendPhoto", "editMessageCaption") and "caption" in call.params:
                out.append(str(call.params["caption"]))
            elif call.method == "editMessageMedia":
                out.append(str(call.params.get("media", {}).get("caption", "")))
        return out

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """Messages the bot sent to a chat (current state), oldest first."""
        return [
            m
            for (chat, _), m in sorted(self.messages.items(), key=lambda kv: kv[0][1])
            if chat == chat_id and m.get("from", {}).get("id") == self.bot["id"]
        ]

    async def wait_for(
        self,
        method: str,
        predicate: Callable[[ApiCall], bool] | None = None,
        *,
        within: float = 15.0,
        since: int = 0,
        **match: Any,
    ) -> ApiCall:
        """The first call of `method` (from index `since`) matching params and predicate."""
        deadline = time.monotonic() + within
        while True:
            for call in self.calls[since:]:
                if call.ok and call.method == method and _matches(call, match):
                    if predicate is None or predicate(call):
                        return call
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = [(c.method, c.params) for c in self.calls[-10:]]
                raise AssertionError(f"no {method} call matching {match}; last calls: {recent}")
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def wait_text(
        self, chat_id: int, contains: str, *, within: float = 15.0, since: int = 0
    ) -> ApiCall:
        """The first message/edit/caption to `chat_id` whose text contains `contains`."""

        def has_text(call: ApiCall) -> bool:
            if call.chat_id != chat_id or not call.ok:
                return False
            text = call.params.get("text") or call.params.get("caption") or ""
            if call.method == "editMessageMedia":
                text = call.params.get("media", {}).get("caption", "")
            return contains in str(text)

        deadline = time.monotonic() + within
        while True:
            for call in self.calls[since:]:
                if has_text(call):
                    return call
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no text containing {contains!r} to {chat_id}; got {self.sent_texts(chat_id)}"
                )
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)

    async def wait_count(self, method: str, count: int, *, within: float = 15.0) -> None:
        """Wait until `method` was called `count` times (failed calls included)."""
        deadline = time.monotonic() + within
        while len(self.calls_to(method)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{method} called {len(self.calls_to(method))} times")
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def idle(self, quiet: float = 0.3, within: float = 15.0) -> None:
        """Wait until all updates were fetched and the bot made no call for `quiet` seconds,
        nor in the `quiet` seconds after a chat's flood schedule would let its next message
        through (a chat that had a burst may still have one coming)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            last = max(self.calls[-1].at if self.calls else 0.0, self._flood_free_at())
            if not self._unfetched() and time.monotonic() - last >= quiet:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the bot did not go idle")

    def _unfetched(self) -> bool:
        return any(u["update_id"] >= self.delivered_offset for u in self._pending)

    # the HTTP side ---------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for stored in self.files.values():
            if stored.path == path:
                return web.Response(body=stored.data)
        return web.Response(status=404)

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await _read_params(request)
        call = ApiCall(method, params, files)
        response = await self._answer(call)
        if method != "getUpdates":
            # Recorded once answered, so a test that sees the call also sees its effects.
            self.calls.append(call)
            self._book_message(call)
            await self._notify()
        return response

    def _book_message(self, call: ApiCall) -> None:
        from telegram_ui.flood import chat_schedule, posts_message

        chat = call.chat_id
        if chat is None or not posts_message(call.method):
            return
        if chat not in self._flood:
            self._flood[chat] = chat_schedule(chat)
        self._flood[chat].commit(call.at)

    def _flood_free_at(self) -> float:
        """When every chat's flood schedule lets a message through at once again (the bot may
        be holding one back until then)."""
        return max((s.earliest(-math.inf) for s in self._flood.values()), default=0.0)

    async def _answer(self, call: ApiCall) -> web.Response:
        gate = self._holds.get(call.method)
        if gate is not None and not gate.is_set():
            self.held.append(call)
            await self._notify()
            await gate.wait()
        failures = self._failures.get(call.method)
        if failures:
            status, retry_after = failures.popleft()
            call.status = status
            if status == 429:
                return _error(429, f"Too Many Requests: retry after {retry_after}", retry_after)
            return _error(status, _DESCRIPTIONS.get(status, "Internal Server Error"))
        handler = getattr(self, f"_m_{call.method}", None)
        if handler is None:
            call.status = 404
            return _error(404, "Not Found: method not found")
        try:
            result = await handler(call)
        except _ApiError as exc:
            call.status = exc.status
            return _error(exc.status, exc.description)
        return web.json_response({"ok": True, "result": result})

    # methods ---------------------------------------------------------------------------

    async def _m_getMe(self, call: ApiCall) -> Any:
        return self.bot

    async def _m_getUpdates(self, call: ApiCall) -> Any:
        offset = int(call.get("offset") or 0)
        limit = int(call.get("limit") or 100)
        allowed = call.get("allowed_updates")
        if allowed is not None:
            self.polling_allowed = list(allowed) or None
        timeout = float(call.get("timeout") or 0)
        if offset:
            self.delivered_offset = max(self.delivered_offset, offset)
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        deadline = time.monotonic() + min(timeout, 5.0)
        while not self._pending and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        if self.polling_allowed is not None:
            kept = []
            for update in self._pending:
                kind = next(k for k in update if k != "update_id")
                (kept if kind in self.polling_allowed else self.dropped_updates).append(update)
            self._pending = kept
        return self._pending[:limit]

    async def _m_deleteWebhook(self, call: ApiCall) -> Any:
        self.webhook_url = self.webhook_secret = None
        return True

    async def _m_setWebhook(self, call: ApiCall) -> Any:
        self.webhook_url = str(call.get("url") or "") or None
        self.webhook_secret = call.get("secret_token")
        allowed = call.get("allowed_updates")
        self.webhook_allowed = list(allowed) if allowed else None
        if self.webhook_url is not None and self._webhook_task is None:
            self._webhook_queue = asyncio.Queue()
            self._webhook_task = asyncio.get_running_loop().create_task(self._post_updates())
        return True

    async def _m_setMyCommands(self, call: ApiCall) -> Any:
        return True

    async def _m_sendChatAction(self, call: ApiCall) -> Any:
        return True

    async def _m_answerCallbackQuery(self, call: ApiCall) -> Any:
        return True

    async def _m_close(self, call: ApiCall) -> Any:
        return True

    async def _m_logOut(self, call: ApiCall) -> Any:
        return True

    async def _m_getFile(self, call: ApiCall) -> Any:
        stored = self.files.get(str(call.get("file_id")))
        if stored is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.unique_id,
            "file_size": len(stored.data),
            "file_path": stored.path,
        }

    def _bot_message(self, chat_id: int, **content: Any) -> dict[str, Any]:
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": self.bot,
            **{k: v for k, v in content.items() if v is not None},
        }
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _photo_sizes(self, value: Any, call: ApiCall, field_name: str) -> list[dict[str, Any]]:
        """PhotoSize list for an uploaded photo (attach or multipart) or a known file_id."""
        data = _upload(value, call, field_name)
        if data is None:
            stored = self.files.get(str(value))
            if stored is None:
                raise _ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        else:
            _check_photo(data)
            stored = self.add_file(data)
        return [
            {
                "file_id": stored.file_id,
                "file_unique_id": stored.unique_id,
                "width": 512,
                "height": 512,
                "file_size": len(stored.data),
            }
        ]

    async def _m_sendMessage(self, call: ApiCall) -> Any:
        return self._bot_message(
            int(call.get("chat_id")), text=call.get("text"), reply_markup=call.get("reply_markup")
        )

    async def _m_sendPhoto(self, call: ApiCall) -> Any:
        return self._bot_message(
            int(call.get("chat_id")),
            photo=self._photo_sizes(call.get("photo"), call, "photo"),
            caption=call.get("caption"),
            reply_markup=call.get("reply_markup"),
        )

    async def _m_sendDocument(self, call: ApiCall) -> Any:
        data = _upload(call.get("document"), call, "document") or b""
        stored = self.add_file(data, "bin")
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.unique_id,
            "file_name": call.get("filename") or "file",
            "file_size": len(data),
        }
        return self._bot_message(
            int(call.get("chat_id")), document=document, caption=call.get("caption")
        )

    async def _m_sendMediaGroup(self, call: ApiCall) -> Any:
        chat_id = int(call.get("chat_id"))
        group = f"G{next(self._message_ids)}"
        return [
            self._bot_message(
                chat_id,
                media_group_id=group,
                photo=self._photo_sizes(item.get("media"), call, ""),
                caption=item.get("caption"),
            )
            for item in call.get("media") or []
        ]

    def _existing(self, call: ApiCall) -> dict[str, Any]:
        key = (int(call.get("chat_id")), int(call.get("message_id")))
        message = self.messages.get(key)
        if message is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        return message

    async def _m_editMessageText(self, call: ApiCall) -> Any:
        message = self._existing(call)
        if "text" not in message:
            raise _ApiError(400, "Bad Request: there is no text in the message to edit")
        markup = call.get("reply_markup")
        if message.get("text") == call.get("text") and message.get("reply_markup") == markup:
            raise _ApiError(400, "Bad Request: message is not modified")
        message["text"] = call.get("text")
        _set_markup(message, markup)
        return message

    async def _m_editMessageCaption(self, call: ApiCall) -> Any:
        message = self._existing(call)
        message["caption"] = call.get("caption")
        _set_markup(message, call.get("reply_markup"))
        return message

    async def _m_editMessageMedia(self, call: ApiCall) -> Any:
        message = self._existing(call)
        media = call.get("media") or {}
        message["photo"] = self._photo_sizes(media.get("media"), call, "")
        message["caption"] = media.get("caption")
        _set_markup(message, call.get("reply_markup"))
        return message

    async def _m_editMessageReplyMarkup(self, call: ApiCall) -> Any:
        message = self._existing(call)
        _set_markup(message, call.get("reply_markup"))
        return message

    async def _m_sendInvoice(self, call: ApiCall) -> Any:
        # What Telegram checks of a Stars invoice: XTR, one price, no provider token needed.
        if call.get("currency") != "XTR":
            raise _ApiError(400, "Bad Request: CURRENCY_INVALID")
        prices = call.get("prices") or []
        if len(prices) != 1 or int(prices[0].get("amount", 0)) < 1:
            raise _ApiError(400, "Bad Request: STARS_INVOICE_INVALID")
        payload = str(call.get("payload") or "")
        if not payload or len(payload.encode()) > 128:
            raise _ApiError(400, "Bad Request: INVOICE_PAYLOAD_INVALID")
        invoice = {
            "title": call.get("title"),
            "description": call.get("description"),
            "start_parameter": str(call.get("start_parameter") or ""),
            "currency": "XTR",
            "total_amount": int(prices[0]["amount"]),
        }
        return self._bot_message(
            int(call.get("chat_id")), invoice=invoice, reply_markup=call.get("reply_markup")
        )

    async def _m_createInvoiceLink(self, call: ApiCall) -> Any:
        # The Mini App's checkout: the same checks as sendInvoice, answered with a t.me link.
        if call.get("currency") != "XTR":
            raise _ApiError(400, "Bad Request: CURRENCY_INVALID")
        prices = call.get("prices") or []
        if len(prices) != 1 or int(prices[0].get("amount", 0)) < 1:
            raise _ApiError(400, "Bad Request: STARS_INVOICE_INVALID")
        payload = str(call.get("payload") or "")
        if not payload or len(payload.encode()) > 128:
            raise _ApiError(400, "Bad Request: INVOICE_PAYLOAD_INVALID")
        return f"https://t.me/$inv{len(self.calls)}"

    async def _m_setChatMenuButton(self, call: ApiCall) -> Any:
        self.menu_button = call.get("menu_button")
        return True

    async def _m_answerPreCheckoutQuery(self, call: ApiCall) -> Any:
        ok = call.get("ok")
        if ok is False and not call.get("error_message"):
            raise _ApiError(400, "Bad Request: error_message is required")
        self.checkout_answers[str(call.get("pre_checkout_query_id"))] = call
        return True

    async def _m_refundStarPayment(self, call: ApiCall) -> Any:
        charge = self.charges.get(str(call.get("telegram_payment_charge_id")))
        if charge is None or charge.user_id != int(call.get("user_id")):
            raise _ApiError(400, "Bad Request: CHARGE_NOT_FOUND")
        if charge.refunded:
            raise _ApiError(400, "Bad Request: CHARGE_ALREADY_REFUNDED")
        self.refund_charge(charge.charge_id)
        return True

    async def _m_getStarTransactions(self, call: ApiCall) -> Any:
        # In chronological order, as Telegram documents it: `offset` transactions skipped.
        offset = int(call.get("offset") or 0)
        limit = int(call.get("limit") or 100)
        if not 1 <= limit <= 100:
            raise _ApiError(400, "Bad Request: limit must be between 1 and 100")
        return {"transactions": self.star_transactions[offset : offset + limit]}

    async def _m_deleteMessage(self, call: ApiCall) -> Any:
        self.messages.pop((int(call.get("chat_id")), int(call.get("message_id"))), None)
        return True


def _star_partner(charge: Charge) -> dict[str, Any]:
    """The TransactionPartnerUser of a Stars invoice payment."""
    return {
        "type": "user",
        "transaction_type": "invoice_payment",
        "user": {"id": charge.user_id, "is_bot": False, "first_name": "Payer"},
        "invoice_payload": charge.payload,
    }


_DESCRIPTIONS = {
    400: "Bad Request: wrong file identifier/HTTP URL specified",
    403: "Forbidden: bot was blocked by the user",
    413: "Request Entity Too Large",
    502: "Bad Gateway",
}
# Telegram's photo limits: 10 MB, and width + height at most 10,000 px.
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDE_SUM = 10_000


def _check_photo(data: bytes) -> None:
    """Refuse a photo upload the way Telegram does when it breaks the photo limits."""
    if len(data) > PHOTO_MAX_BYTES:
        raise _ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except OSError:
        return
    if width + height > PHOTO_MAX_SIDE_SUM:
        raise _ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


def _decode(key: str, value: str) -> Any:
    if key in STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        body = await request.json() if request.can_read_body else {}
        return dict(body), files
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        async for part in reader:
            if part.filename is not None:
                files[part.name or ""] = bytes(await part.read())
                if part.name == "document":
                    # Telegram names a document after its upload (what users download).
                    params.setdefault("filename", part.filename)
            else:
                params[part.name or ""] = _decode(part.name or "", await part.text())
        return params, files
    form = await request.post()
    for key, value in form.items():
        params[key] = _decode(key, str(value))
    params.update({k: v for k, v in request.query.items()})
    return params, files


def _upload(value: Any, call: ApiCall, field_name: str) -> bytes | None:
    """Bytes uploaded for a parameter: `attach://name`, or a multipart field of that name."""
    if isinstance(value, str) and value.startswith("attach://"):
        return call.files.get(value.removeprefix("attach://"))
    if value is None and field_name in call.files:
        return call.files[field_name]
    if field_name and field_name in call.files:
        return call.files[field_name]
    return None


def _set_markup(message: dict[str, Any], markup: Any) -> None:
    if markup:
        message["reply_markup"] = markup
    else:
        message.pop("reply_markup", None)


def _matches(call: ApiCall, match: dict[str, Any]) -> bool:
    for key, want in match.items():
        got = call.params.get(key)
        if key == "chat_id" and got is not None:
            got = int(got)
        if got != want:
            return False
    return True


def button_data(message: dict[str, Any], text: str) -> str:
    """The callback data of the first button whose label contains `text`."""
    markup = message.get("reply_markup") or {}
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if text in button.get("text", ""):
                return str(button["callback_data"])
    raise AssertionError(f"no button with {text!r} in {markup}")


def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, callback data) of every button of a message."""
    markup = message.get("reply_markup") or {}
    return [
        (b.get("text", ""), b.get("callback_data", ""))
        for row in markup.get("inline_keyboard", [])
        for b in row
    ]


@contextlib.asynccontextmanager
async def running_bot(application: Any, *, poll_timeout: int = 2) -> AsyncIterator[Any]:
    """Run a PTB Application with long polling against the fake server, then stop it cleanly."""
    async with application:
        await application.start()
        assert application.updater is not None
        await application.updater.start_polling(poll_interval=0.0, timeout=poll_timeout)
        try:
            yield application
        finally:
            await application.updater.stop()
            await application.stop()
