"""Load test: N simulated users through the fake Bot API server against the full service.

What runs (all on this machine, loopback only): a redis-server of its own (the embedded SQLite
broker when redis-server is not installed), PostgreSQL when it answers on 127.0.0.1:5432 (a fresh
`facechain_bench` database; else a SQLite file), the bot as a `facechain-bot bot` process (long
polling), one gpu worker (tiny profile, one thread, prefork 1) and one io worker. This process is
Telegram: the fake Bot API server plus the users.

Each user first says /start, sends a selfie and asks for portraits (so the gpu worker is busy the
whole time and the queue is long), then keeps using the bot for `--seconds`: browsing the style
carousel, /help, /history, /style, text, "Use this style" again (answered "a job is already
running"). Users are closed loops: send one update, wait for the bot's first reply (the first Bot
API call the update causes: answerCallbackQuery for a button, typing/sendMessage/sendPhoto for a
message), think `--think-ms`, repeat. Updates the bot answers with a new message (commands, text,
"Use this style") come at most one a second per user (`--message-gap-ms`), as a person types:
Telegram lets a bot post about one message a second in a chat, so a user sending more would be
measuring the flood limit, not capacity; in between, the user browses the carousel (answered
with edits, which are not messages). The per-user flood limit is lifted for the run
(LIMITS_UPDATES_PER_MINUTE): this measures capacity, not the limiter.

The fake Bot API checks Telegram's flood limits as `telegram_ui.flood` states them (one message
a second per private chat with bursts of 3, 20 a minute per group), on arrival times with
`FLOOD_SLACK_S` of slack for the loopback and event loops: a chat that receives messages faster
fails the run (exit status 1), whatever the figures.

Reported: updates/s accepted (fetched by the bot) and answered in the window; p50/p95/p99 from
update to first reply; p50/p95/p99 from "Use this style" to the album for jobs delivered before
the end; the share of those jobs' time spent queued, generating and delivering. The last line is
`accepted_updates_per_s: X p99_first_reply_ms: Y`.

Run: `python bench/load.py --users 50 --seconds 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SELFIES = (
    "man_pose1.png",
    "woman_pose1.png",
    "man_pose2.png",
    "woman_pose2.png",
    "man_pose3.png",
    "woman_pose3.png",
)
BENCH_DB = "facechain_bench"
FIRST_USER_ID = 900_000
REPLY_TIMEOUT_S = 15.0
# How much earlier than the flood limits allow a message may arrive (scheduling jitter).
FLOOD_SLACK_S = 0.25
# Methods the bot (never a worker) calls first when it answers a message.
FIRST_REPLY_METHODS = frozenset(
    {"sendMessage", "sendPhoto", "sendChatAction", "editMessageMedia", "editMessageReplyMarkup"}
)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values; inf when empty."""
    if not values:
        return math.inf
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100.0 * len(ordered)) - 1)
    return ordered[rank]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process and its live children used so far (from /proc)."""
    from tests.utils.stack import child_pids

    total = 0.0
    for each in (pid, *child_pids(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class FloodCheck:
    """Telegram's side of the flood limits: every message a chat receives is booked on that
    chat's schedule (`telegram_ui.flood`); one arriving earlier than it allows (less the slack)
    is a violation."""

    def __init__(self) -> None:
        self.chats: dict[int, Any] = {}
        # Each chat's last messages (method, arrival), to show what came before a violation.
        self.recent: dict[int, deque[tuple[str, float]]] = {}
        self.messages = 0
        self.violations: list[str] = []
        self.worst_s = 0.0

    def on_call(self, call: Any) -> None:
        """Book a message (other calls are not limited)."""
        from telegram_ui.flood import chat_schedule, posts_message

        chat = call.chat_id
        if chat is None or not posts_message(call.method):
            return
        self.messages += 1
        schedule = self.chats.get(chat)
        if schedule is None:
            schedule = self.chats[chat] = chat_schedule(chat)
        recent = self.recent.setdefault(chat, deque(maxlen=6))
        recent.append((call.method, call.at))
        early = schedule.earliest(-math.inf) - call.at
        self.worst_s = max(self.worst_s, early)
        if early > FLOOD_SLACK_S:
            before = ", ".join(f"{m} {(at - call.at) * 1000:+.0f} ms" for m, at in recent)
            self.violations.append(
                f"chat {chat}: {call.method} {early * 1000:.0f} ms early (last: {before})"
            )
        schedule.commit(call.at)


@dataclass
class Recorder:
    """Attributes Bot API calls to the updates that caused them (closed loop per user)."""

    job_next_text: str
    # A user's one outstanding update, by chat id (messages) or callback query id (buttons).
    waiters: dict[int | str, asyncio.Future[float]] = field(default_factory=dict)
    # After a button's answer, the call that finishes handling it (an edit, a message).
    follow_ups: dict[int, tuple[frozenset[str], asyncio.Future[float]]] = field(
        default_factory=dict
    )
    albums: dict[int, float] = field(default_factory=dict)
    fetched: dict[int, float] = field(default_factory=dict)
    flood: FloodCheck = field(default_factory=FloodCheck)

    def on_call(self, call: Any) -> None:
        """Called for every Bot API request the fake server receives."""
        self.flood.on_call(call)
        chat = call.chat_id
        if call.method == "sendMediaGroup" and chat is not None:
            self.albums.setdefault(chat, call.at)
            return
        if call.method == "sendMessage" and call.params.get("text") == self.job_next_text:
            return  # the io worker's "what next?" after an album
        pending = self.follow_ups.get(chat) if chat is not None else None
        if chat is not None and pending is not None and call.method in pending[0]:
            del self.follow_ups[chat]
            if not pending[1].done():
                pending[1].set_result(call.at)
            return
        if call.method == "answerCallbackQuery":
            key: int | str = str(call.params.get("callback_query_id"))
        elif call.method in FIRST_REPLY_METHODS and chat is not None:
            key = chat
        else:
            return
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(call.at)


class HookedCalls(list):  # type: ignore[type-arg]
    """The fake server's call log, telling the recorder about each new call."""

    def __init__(self, hook: Callable[[Any], None]) -> None:
        super().__init__()
        self.hook = hook

    def append(self, item: Any) -> None:
        """Record the call, then tell the hook."""
        super().append(item)
        self.hook(item)


@dataclass
class Sample:
    """One update in the measured window."""

    kind: str
    sent: float
    replied: float | None


class SimUser:
    """One simulated person."""

    def __init__(self, load: LoadTest, index: int) -> None:
        self.load = load
        self.index = index
        self.user = load.tg.user(FIRST_USER_ID + index, f"User{index}", "en")
        self.picker: dict[str, Any] | None = None
        self.samples: list[Sample] = []
        self.job_requested: float | None = None
        self.rng = random.Random(index)

    async def send(
        self, kind: str, action: Callable[[], int | str], then: frozenset[str] = frozenset()
    ) -> None:
        """Inject one update and wait for its first reply (measured), then for the call that
        finishes it (`then`, not measured), so the next update's reply is not confused with it.
        `action` injects the update and returns the key its first reply is known by."""
        loop = asyncio.get_running_loop()
        first: asyncio.Future[float] = loop.create_future()
        done: asyncio.Future[float] = loop.create_future()
        sent = time.monotonic()
        # Nothing can answer before this coroutine yields, so registering after is safe.
        self.load.recorder.waiters[action()] = first
        if then:
            self.load.recorder.follow_ups[self.user.id] = (then, done)
        try:
            replied: float | None = await asyncio.wait_for(first, REPLY_TIMEOUT_S)
            if then:
                await asyncio.wait_for(done, REPLY_TIMEOUT_S)
        except TimeoutError:
            replied = first.result() if first.done() else None
            self.load.recorder.follow_ups.pop(self.user.id, None)
        if self.load.measuring(sent):
            self.samples.append(Sample(kind, sent, replied))

    async def text(self, kind: str, text: str) -> None:
        """Send a text message (or command) and wait for its reply."""

        def act() -> int:
            self.load.tg.send_text(self.user, text)
            return int(self.user.id)

        await self.send(kind, act)

    async def press(self, kind: str, data: str, then: str) -> None:
        """Press a button under the picker; `then` is the call that completes its handling."""
        assert self.picker is not None
        picker = self.picker
        await self.send(
            kind, lambda: str(self.load.tg.press(self.user, picker, data)), frozenset({then})
        )

    async def setup(self) -> None:
        """/start, a selfie, and a portrait request."""
        tg = self.load.tg
        await self.text("start", "/start")
        selfie = self.load.selfies[self.index % len(self.load.selfies)]

        def photo() -> int:
            tg.send_photo(self.user, selfie)
            return int(self.user.id)

        await self.send("selfie", photo)
        await self.load.until(lambda: self.find_picker() is not None, 60)
        self.picker = self.find_picker()
        self.job_requested = time.monotonic()
        await self.press("use_style", f"su:{self.load.style_ids[0]}", "sendMessage")

    def find_picker(self) -> dict[str, Any] | None:
        """The newest photo message (the style carousel) the bot sent this user."""
        photos = [m for m in self.load.tg.bot_messages(self.user.id) if m.get("photo")]
        return photos[-1] if photos else None

    async def browse(self, deadline: float) -> None:
        """Use the bot until the deadline (closed loop): an update answered with a new message
        once `--message-gap-ms` has passed since the last one, carousel buttons meanwhile."""
        in_place = (
            lambda: self.press(
                "next_style", f"sp:all:{self.rng.randrange(50)}", "editMessageMedia"
            ),
            lambda: self.press(
                "prev_style", f"sp:all:{self.rng.randrange(50)}", "editMessageMedia"
            ),
            lambda: self.press("categories", "sc:0", "editMessageReplyMarkup"),
        )
        messages = (
            lambda: self.text("help", "/help"),
            lambda: self.text("text", "hello there"),
            lambda: self.text("history", "/history"),
            lambda: self.press("use_style_again", f"su:{self.load.style_ids[0]}", "sendMessage"),
            lambda: self.text("style", "/style"),
            lambda: self.text("start", "/start"),
        )
        step = self.rng.randrange(len(messages))
        browse_step = self.rng.randrange(len(in_place))
        # The setup's messages just went: the first command waits a gap too.
        last_message = time.monotonic()
        while time.monotonic() < deadline:
            if time.monotonic() - last_message >= self.load.message_gap_s:
                last_message = time.monotonic()
                await messages[step % len(messages)]()
                step += 1
            else:
                await in_place[browse_step % len(in_place)]()
                browse_step += 1
            if self.load.think_s:
                await asyncio.sleep(self.rng.expovariate(1.0 / self.load.think_s))


class LoadTest:
    """The service under test and the users driving it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.think_s = args.think_ms / 1000.0
        self.message_gap_s = args.message_gap_ms / 1000.0
        self.window: tuple[float, float] = (math.inf, math.inf)
        self.workdir = Path(tempfile.mkdtemp(prefix="facechain-load-"))
        self.selfies = [(ROOT / "tests" / "fixtures" / "faces" / n).read_bytes() for n in SELFIES]
        self.style_ids: list[int] = []
        self.cleanup: list[Callable[[], Any]] = []
        self.tg: Any = None
        self.recorder: Recorder
        self.bot: Any = None
        self.db: Any = None

    def measuring(self, at: float) -> bool:
        """Whether a moment falls in the measured window."""
        return self.window[0] <= at < self.window[1]

    async def until(self, predicate: Callable[[], object], seconds: float) -> None:
        """Poll until `predicate()` holds; TimeoutError after `seconds`."""
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the service did not answer in time")
            await asyncio.sleep(0.05)

    def database(self) -> str:
        """A fresh PostgreSQL database when one answers, else a SQLite file; migrated."""
        from service.migrate import upgrade
        from tests.conftest import fresh_postgres_database, postgres_available

        if postgres_available():
            url = fresh_postgres_database(BENCH_DB)
        else:
            url = f"sqlite:///{self.workdir / 'bench.db'}"
        upgrade(url)
        return url

    async def start(self) -> None:
        """Redis, database, fake Telegram, workers and the bot."""
        from core.blobstore import LocalBlobStore
        from db.session import Database
        from telegram_ui.i18n import translate
        from tests.utils.fake_telegram import FakeTelegram
        from tests.utils.redis_server import OwnRedis, redis_server_available
        from tests.utils.stack import BotProcess, seed_styles, service_env
        from tests.utils.workers import WorkerProcess

        if redis_server_available():
            redis = OwnRedis(self.workdir / "redis")
            redis.start()
            self.cleanup.append(redis.stop)
            broker_url = redis.url
        else:
            print("redis-server is not installed: using the embedded SQLite broker (slower)")
            broker_url = f"sqla+sqlite:///{self.workdir / 'broker.db'}"
        url = self.database()
        self.db = Database.from_url(url)
        self.cleanup.append(self.db.dispose)
        data_dir = self.workdir / "data"
        self.style_ids = seed_styles(self.db, LocalBlobStore(data_dir / "blobs"))

        self.tg = FakeTelegram()
        await self.tg.start()
        self.recorder = Recorder(job_next_text=translate("en", "job.next"))
        self.tg.calls = HookedCalls(self.recorder.on_call)
        fetch = self.tg._m_getUpdates

        async def counted_fetch(call: Any) -> Any:
            updates = await fetch(call)
            now = time.monotonic()
            for update in updates:
                self.recorder.fetched.setdefault(update["update_id"], now)
            return updates

        self.tg._m_getUpdates = counted_fetch
        env = service_env(
            self.tg,
            database_url=url,
            broker_url=broker_url,
            data_dir=data_dir,
            LIMITS_UPDATES_PER_MINUTE="1000000",
            LIMITS_DAILY_QUOTA="1000",
            ENGINE_NUM_IMAGES=str(self.args.images),
            ENGINE_NUM_CANDIDATES=str(self.args.images),
        )
        logs = self.workdir / "logs"
        logs.mkdir()
        workers = [
            WorkerProcess(env, "gpu", logs / "gpu.log", concurrency=1),
            WorkerProcess(env, "io", logs / "io.log", concurrency=4),
        ]
        for worker in workers:
            self.cleanup.append(worker.stop)
        self.bot = BotProcess(env, logs / "bot.log")
        self.cleanup.append(self.bot.stop)
        await self.until(lambda: all(" ready." in w.log() for w in workers), 180)
        await self.bot.ready(180)
        self.workers = workers

    async def stop(self) -> None:
        """Stop every process, drop the database, remove the work folder."""
        for step in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                step()
        if self.tg is not None:
            await self.tg.stop()
        with contextlib.suppress(Exception):
            from tests.conftest import drop_postgres_database, postgres_available

            if postgres_available():
                drop_postgres_database(BENCH_DB)
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def run(self) -> dict[str, Any]:
        """Set up every user, then measure `--seconds` of traffic."""
        users = [SimUser(self, i) for i in range(self.args.users)]
        setup_started = time.monotonic()
        await asyncio.gather(*(u.setup() for u in users))
        setup_s = time.monotonic() - setup_started
        pids = {
            "bot": self.bot.proc.pid,
            "gpu worker": self.workers[0].proc.pid,
            "io worker": self.workers[1].proc.pid,
            "load generator + fake Telegram": os.getpid(),
        }
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.monotonic()
        self.window = (start, start + self.args.seconds)
        await asyncio.gather(*(u.browse(self.window[1]) for u in users))
        end = time.monotonic()
        cpu = {
            name: (cpu_seconds(pid) - before[name]) / (end - start) for name, pid in pids.items()
        }
        if self.args.drain:
            await self.until_albums(users, self.args.drain)
        return self.report(users, start, end, setup_s, cpu)

    async def until_albums(self, users: list[SimUser], seconds: float) -> None:
        """Wait up to `seconds` for every user's first album."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(u.user.id in self.recorder.albums for u in users):
                return
            await asyncio.sleep(0.2)

    def report(
        self, users: list[SimUser], start: float, end: float, setup_s: float, cpu: dict[str, float]
    ) -> dict[str, Any]:
        from sqlalchemy import select

        from db.models import Job

        seconds = end - start
        samples = [s for u in users for s in u.samples]
        answered = [s for s in samples if s.replied is not None]
        latencies = [(s.replied - s.sent) * 1000 for s in answered if s.replied is not None]
        latencies += [math.inf] * (len(samples) - len(answered))
        pushed_in_window = sum(1 for s in samples)
        accepted = sum(1 for at in self.recorder.fetched.values() if start <= at < end)
        album_s = [
            self.recorder.albums[u.user.id] - u.job_requested
            for u in users
            if u.job_requested is not None and u.user.id in self.recorder.albums
        ]
        with self.db.session() as session:
            jobs = session.scalars(select(Job)).all()
            finished = [j for j in jobs if j.finished_at and j.started_at]
            queue = sum((j.started_at - j.created_at).total_seconds() for j in finished)
            generation = sum((j.finished_at - j.started_at).total_seconds() for j in finished)
            delivery = sum(
                (j.delivered_at - j.finished_at).total_seconds()
                for j in finished
                if j.delivered_at
            )
            total = len(jobs)
        busy = queue + generation + delivery
        kinds: dict[str, list[float]] = {}
        for s in answered:
            if s.replied is not None:
                kinds.setdefault(s.kind, []).append((s.replied - s.sent) * 1000)
        return {
            "users": len(users),
            "seconds": seconds,
            "setup_s": setup_s,
            "injected": pushed_in_window,
            "accepted_per_s": accepted / seconds,
            "answered_per_s": len(answered) / seconds,
            "unanswered": len(samples) - len(answered),
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else math.inf,
            "by_kind": {k: statistics.median(v) for k, v in sorted(kinds.items())},
            "albums": len(album_s),
            "jobs": total,
            "album_p50": percentile(album_s, 50),
            "album_p95": percentile(album_s, 95),
            "album_p99": percentile(album_s, 99),
            "finished": len(finished),
            "queue_share": queue / busy if busy else 0.0,
            "generation_share": generation / busy if busy else 0.0,
            "delivery_share": delivery / busy if busy else 0.0,
            "generation_mean_s": generation / len(finished) if finished else math.nan,
            "cpu": cpu,
            "bot_rss_mib": _rss_mib(self.bot.proc.pid),
            "messages": self.recorder.flood.messages,
            "chats": len(self.recorder.flood.chats),
            "flood_worst_ms": self.recorder.flood.worst_s * 1000,
            "flood_violations": list(self.recorder.flood.violations),
        }


def _rss_mib(pid: int) -> float:
    from tests.utils.stack import read_rss_kib

    return read_rss_kib(pid) / 1024


def print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    """The human-readable lines, then the one summary line."""
    print(
        f"users: {r['users']}, window: {r['seconds']:.1f} s, think: {args.think_ms} ms, "
        f"message gap: {args.message_gap_ms} ms, "
        f"workers: 1 gpu (tiny, 1 thread), 1 io; setup of all users took {r['setup_s']:.1f} s"
    )
    print(
        f"updates in window: sent {r['injected']}, accepted {r['accepted_per_s']:.0f}/s, "
        f"answered {r['answered_per_s']:.0f}/s, unanswered after {REPLY_TIMEOUT_S:.0f} s: "
        f"{r['unanswered']}"
    )
    print(
        f"first reply ms: p50 {r['p50']:.0f}, p95 {r['p95']:.0f}, p99 {r['p99']:.0f}, "
        f"max {r['max']:.0f}"
    )
    print(
        "first reply ms by kind (median): "
        + ", ".join(f"{k} {v:.0f}" for k, v in r["by_kind"].items())
    )
    print(
        f"request to album s: p50 {r['album_p50']:.1f}, p95 {r['album_p95']:.1f}, "
        f"p99 {r['album_p99']:.1f} ({r['albums']} of {r['jobs']} jobs delivered by the end)"
    )
    print(
        f"job time share: queue {r['queue_share']:.0%}, generation {r['generation_share']:.0%}, "
        f"delivery {r['delivery_share']:.0%} (of {r['finished']} finished jobs; "
        f"{r['generation_mean_s']:.1f} s generation each)"
    )
    print(
        "cpu, share of one core: "
        + ", ".join(f"{name} {share:.0%}" for name, share in r["cpu"].items())
        + f" (machine: {os.cpu_count()} cores); bot RSS {r['bot_rss_mib']:.0f} MiB"
    )
    print(
        f"flood limits: {r['messages']} messages to {r['chats']} chats, the earliest "
        f"{r['flood_worst_ms']:.0f} ms before its chat's schedule allowed "
        f"(slack {FLOOD_SLACK_S * 1000:.0f} ms), {len(r['flood_violations'])} over the limit"
    )
    for violation in r["flood_violations"][:10]:
        print(f"  over the flood limit: {violation}")
    print(f"accepted_updates_per_s: {r['accepted_per_s']:.1f} p99_first_reply_ms: {r['p99']:.0f}")


async def main_async(args: argparse.Namespace) -> int:
    """Start the service, run the users, stop everything, print the report."""
    load = LoadTest(args)
    try:
        await load.start()
        result = await load.run()
    finally:
        await load.stop()
    print_report(result, args)
    if result["flood_violations"]:
        print("FAILED: a chat received messages faster than Telegram's flood limits allow")
        return 1
    return 0


def main() -> int:
    """Parse arguments and run the load test."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="simulated users (default 50)")
    parser.add_argument("--seconds", type=float, default=20, help="measured window (default 20)")
    parser.add_argument("--think-ms", type=float, default=0, help="mean pause between updates")
    parser.add_argument(
        "--message-gap-ms",
        type=float,
        default=1000,
        help="least time between a user's updates answered with a new message (default 1000)",
    )
    parser.add_argument(
        "--images", type=int, default=2, help="portraits per job, 2 to 8 (default 2)"
    )
    parser.add_argument(
        "--drain", type=float, default=0, help="extra seconds to wait for albums after the window"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = parser.parse_args()
    if args.users < 1 or args.seconds <= 0:
        parser.error("--users and --seconds must be positive")
    if not 2 <= args.images <= 8:
        # One image would come as sendPhoto, which the reply attribution reserves for the bot.
        parser.error("--images must be between 2 and 8")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
