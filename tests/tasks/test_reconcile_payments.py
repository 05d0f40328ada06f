"""Scheduled reconciliation of Stars payments (issue 16): beat sends `payments.reconcile` only
with payments on; the io task credits a payment whose `successful_payment` update was lost once
(getStarTransactions on the fake Bot API), tells the payer and the admin chat, and counts it; a
run while another holds the lock does nothing; the lock itself holds across connections."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import insert, select

from core.metrics import create_metrics
from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    PaymentsSettings,
    StorageSettings,
    TelegramSettings,
)
from db.locks import try_lock
from db.models import Pack, Payment, User
from db.session import Database
from domain import billing
from tasks.celery_app import QUEUE_MODULES, beat_schedule, create_celery, modules_for
from tasks.context import WorkerContext, set_context
from tasks.payments import LOCK_NAME, TASK_NAME, reconcile_once
from telegram_ui.i18n import ntranslate
from tests.utils.factories import make_user
from tests.utils.fake_telegram import TOKEN, Charge, FakeTelegram

ADMIN_CHAT = -100777


def test_beat_reconciles_only_with_payments_on() -> None:
    on = PaymentsSettings(enabled=True, reconcile_interval_seconds=600)
    schedule = beat_schedule(AppConfig(payments=on))
    entry = schedule["reconcile-payments"]
    assert entry["task"] == TASK_NAME
    assert entry["options"] == {"queue": "io"}
    assert getattr(entry["schedule"], "total_seconds", lambda: 0)() == 600
    off = AppConfig(payments=PaymentsSettings(enabled=False))
    assert TASK_NAME not in {e["task"] for e in beat_schedule(off).values()}
    zero = AppConfig(payments=PaymentsSettings(enabled=True, reconcile_interval_seconds=0))
    assert TASK_NAME not in {e["task"] for e in beat_schedule(zero).values()}
    # The default: hourly.
    assert PaymentsSettings().reconcile_interval_seconds == 3600
    with pytest.raises(ValidationError, match="at least 60"):
        PaymentsSettings(reconcile_interval_seconds=5)


def test_only_io_workers_import_the_task() -> None:
    assert "tasks.payments" in modules_for(["io"])
    assert "tasks.payments" not in QUEUE_MODULES["gpu"] + QUEUE_MODULES["train"]
    app = create_celery(AppConfig(broker=BrokerSettings(url="memory://")))
    assert app.amqp.router.route({}, TASK_NAME)["queue"].name == "io"


@pytest.fixture
async def tg() -> Any:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def ctx(
    tg: FakeTelegram, committed_db: Database, tmp_path: Path, database_url: str
) -> Iterator[WorkerContext]:
    config = AppConfig(
        telegram=TelegramSettings(
            token=TOKEN,
            api_base_url=tg.api_base_url,
            file_base_url=tg.file_base_url,
            admin_chat_id=ADMIN_CHAT,
        ),
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://", io_time_limit=30),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),  # type: ignore[call-arg]
        payments=PaymentsSettings(enabled=True),
    )
    context = WorkerContext(config, create_celery(config))
    context.db.dispose()
    context.db = committed_db
    set_context(context)
    yield context
    set_context(None)
    if context._telegram is not None:
        context._telegram.close()


def _lost_payment(ctx: WorkerContext, tg: FakeTelegram, telegram_id: int) -> str:
    """A payer who checked out a 3-credit pack whose successful_payment never arrived."""
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=telegram_id)
        pack = Pack(title="Small", credits=3, stars=30, enabled=True, position=1)
        s.add(pack)
        s.flush()
        payload = billing.issue_invoice(s, user.id, pack.id, ctx.config.payments).payload
    return tg.lost_payment(tg.user(telegram_id, "Max", "en"), payload, 30)


def _credits(ctx: WorkerContext, telegram_id: int) -> int:
    with ctx.db.session() as s:
        return int(s.scalar(select(User.credits).where(User.telegram_id == telegram_id)) or 0)


async def test_a_lost_payment_is_credited_once_and_the_admins_are_told(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    charge = _lost_payment(ctx, tg, 9701)
    metrics = create_metrics()
    run = await asyncio.to_thread(reconcile_once, ctx, metrics)
    assert run.outcome == "done"
    assert [r.stars for r in run.credited] == [30]
    assert _credits(ctx, 9701) == 3
    with ctx.db.session() as s:
        assert s.scalars(select(Payment.charge_id)).all() == [charge]
    await tg.wait_text(9701, "✅ Thank you! 3 credits added. Your balance: 3 credits.")
    notice = ntranslate(
        None,
        "admin.reconcile_notice",
        1,
        stars=30,
        payments=str(run.credited[0].payment_id),
    )
    await tg.wait_text(ADMIN_CHAT, notice)
    assert metrics.payments_reconciled.labels(trigger="schedule")._value.get() == 1
    assert metrics.payments.labels(event="succeeded")._value.get() == 1

    # The next run finds the payment recorded: it credits nothing and tells nobody.
    since = len(tg.calls)
    again = await asyncio.to_thread(reconcile_once, ctx, metrics)
    assert (again.outcome, again.credited) == ("done", [])
    assert _credits(ctx, 9701) == 3
    assert len(tg.calls_to("getStarTransactions")) == 2
    assert [c for c in tg.calls[since:] if c.method == "sendMessage"] == []
    assert metrics.payments_reconciled.labels(trigger="schedule")._value.get() == 1
    assert metrics.reconcile_runs.labels(outcome="done")._value.get() == 2


async def test_a_lost_refund_is_recorded_and_the_payer_and_admins_are_told(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    """Telegram refunded a recorded payment and its `refunded_payment` update was lost: the
    scheduled run debits the credits once, tells the payer, and the admin notice says so (no
    payment was credited, so it names only the refund)."""
    charge = _lost_payment(ctx, tg, 9704)
    with ctx.db.session() as s:
        payload = tg.charges[charge].payload
        billing.record_payment(s, 9704, payload, 30, charge)
    tg.refund_charge(charge)
    metrics = create_metrics()

    run = await asyncio.to_thread(reconcile_once, ctx, metrics)

    assert (run.outcome, run.credited) == ("done", [])
    [refund] = run.found.refunded
    assert (refund.stars, refund.debited, refund.shortfall) == (30, 3, 0)
    assert _credits(ctx, 9704) == 0
    await tg.wait_text(
        9704,
        (
            "↩️ Your payment of 30 ⭐ was refunded; 3 credits were taken back. "
            "Your balance: 0 credits."
        ),
    )
    notice = ntranslate(
        None,
        "admin.reconcile_refunds",
        1,
        stars=30,
        debited=3,
        shortfall=0,
        payments=str(refund.payment_id),
    )
    told = await tg.wait_text(ADMIN_CHAT, notice)
    assert told.params["text"] == notice
    assert metrics.payments.labels(event="refunded")._value.get() == 1
    assert metrics.payment_stars.labels(event="refunded")._value.get() == 30
    # Recorded once: the next run finds nothing to do and tells nobody.
    since = len(tg.calls)
    again = await asyncio.to_thread(reconcile_once, ctx, metrics)
    assert again.found == billing.Reconciled()
    assert [c for c in tg.calls[since:] if c.method == "sendMessage"] == []


async def test_a_run_while_another_holds_the_lock_does_nothing(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    _lost_payment(ctx, tg, 9702)
    metrics = create_metrics()
    with try_lock(ctx.db, LOCK_NAME) as held:
        assert held
        run = await asyncio.to_thread(reconcile_once, ctx, metrics)
    assert run.outcome == "locked"
    assert tg.calls_to("getStarTransactions") == []
    assert _credits(ctx, 9702) == 0
    assert metrics.reconcile_runs.labels(outcome="locked")._value.get() == 1
    # Once the holder is done, the next run reconciles: the task an io worker registers.
    app = create_celery(ctx.config, ["io"])
    app.loader.import_default_modules()
    outcome = await asyncio.to_thread(lambda: app.tasks[TASK_NAME].apply().get())
    assert outcome == "done"
    assert _credits(ctx, 9702) == 3


async def test_payments_off_reconciles_nothing(tg: FakeTelegram, ctx: WorkerContext) -> None:
    _lost_payment(ctx, tg, 9703)
    ctx.config = ctx.config.model_copy(update={"payments": PaymentsSettings(enabled=False)})
    run = await asyncio.to_thread(reconcile_once, ctx, create_metrics())
    assert run.outcome == "off"
    assert tg.calls_to("getStarTransactions") == []
    assert _credits(ctx, 9703) == 0


def _lock_databases(tmp_path: Path, database_url: str) -> list[Database]:
    urls = {database_url, f"sqlite:///{tmp_path / 'locks.db'}", "sqlite://"}
    return [Database.from_url(url) for url in sorted(urls)]


def test_the_lock_is_exclusive_across_connections_and_threads(
    tmp_path: Path, database_url: str
) -> None:
    for db in _lock_databases(tmp_path, database_url):
        other = Database.from_url(str(db.engine.url.render_as_string(hide_password=False)))
        try:
            with try_lock(db, "test.lock") as first:
                assert first, db.engine.url
                # Another engine (as another process would) and another thread are refused.
                with try_lock(other, "test.lock") as second:
                    assert not second, db.engine.url

                def take() -> bool:
                    with try_lock(db, "test.lock") as held:
                        return held

                with ThreadPoolExecutor(1) as pool:
                    assert pool.submit(take).result() is False
                # A different name is a different lock.
                with try_lock(other, "test.other") as unrelated:
                    assert unrelated
            with try_lock(other, "test.lock") as after:
                assert after, db.engine.url
        finally:
            other.dispose()
            db.dispose()


HOLDER = """
import sys, time
from db.locks import try_lock
from db.session import Database
with try_lock(Database.from_url(sys.argv[1]), "test.lock") as held:
    print("held" if held else "busy", flush=True)
    time.sleep(60)
"""


def test_another_process_holding_the_lock_blocks_until_it_dies(
    tmp_path: Path, database_url: str
) -> None:
    """Two beats are two processes: one holds, the other is refused; a holder killed with
    SIGKILL (no cleanup) frees the lock with its connection or open file."""
    for url in sorted({database_url, f"sqlite:///{tmp_path / 'locks.db'}"}):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url],
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            text=True,
        )
        db = Database.from_url(url)
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            with try_lock(db, "test.lock") as held:
                assert not held, url
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            deadline = time.monotonic() + 10
            while True:
                with try_lock(db, "test.lock") as held:
                    if held:
                        break
                assert time.monotonic() < deadline, f"lock of a killed holder not freed: {url}"
                time.sleep(0.1)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(10)
            db.dispose()


HISTORY = 25_000


async def test_a_25000_transaction_history_is_read_once_then_only_what_is_new(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    """getStarTransactions lists the oldest first: a payment lost after 24,999 recorded ones is
    the last page, which a reader that stops at a cap never reaches. The first run reads the
    whole history; each later run reads on from the place it kept, in one or two calls."""
    with ctx.db.session() as s:
        payers = [make_user(s, telegram_id=80_000 + n) for n in range(50)]
        rows = []
        for n in range(HISTORY - 1):
            payer = payers[n % len(payers)]
            charge = f"stxOLD{n:06d}"
            old = Charge(charge, payer.telegram_id, 10, f"old:{n}", date=1_700_000_000 + n)
            tg.add_charge(old)
            rows.append(
                {
                    "charge_id": charge,
                    "user_id": payer.id,
                    "telegram_id": payer.telegram_id,
                    "title": "Old",
                    "stars": 10,
                    "credits": 1,
                }
            )
        s.execute(insert(Payment), rows)
    lost = _lost_payment(ctx, tg, 9711)
    assert len(tg.star_transactions) == HISTORY

    metrics = create_metrics()
    run = await asyncio.to_thread(reconcile_once, ctx, metrics)
    assert run.outcome == "done"
    assert [r.stars for r in run.credited] == [30]
    assert _credits(ctx, 9711) == 3
    # 250 full pages, then the empty one that says the history ends there.
    assert len(tg.calls_to("getStarTransactions")) == HISTORY // 100 + 1
    with ctx.db.session() as s:
        assert billing.star_cursor(s) == billing.StarCursor(HISTORY, f"in:{lost}")

    # Nothing new: one call, nothing credited twice.
    since = len(tg.calls)
    again = await asyncio.to_thread(reconcile_once, ctx, metrics)
    assert (again.outcome, again.credited) == ("done", [])
    assert len([c for c in tg.calls[since:] if c.method == "getStarTransactions"]) == 1
    assert _credits(ctx, 9711) == 3

    # What happened since: the lost payment refunded at Telegram, another payment lost.
    tg.refund_charge(lost)
    with ctx.db.session() as s:
        user_id = s.scalar(select(User.id).where(User.telegram_id == 9711))
        pack_id = s.scalar(select(Pack.id).where(Pack.title == "Small"))
        assert user_id is not None
        assert pack_id is not None
        payload = billing.issue_invoice(s, user_id, pack_id, ctx.config.payments).payload
    newer = tg.lost_payment(tg.user(9711, "Max", "en"), payload, 30)
    since = len(tg.calls)
    third = await asyncio.to_thread(reconcile_once, ctx, metrics)
    assert [r.payment_id for r in third.credited] != []
    assert [r.charge_id for r in third.found.refunded] == [lost]
    calls = [c for c in tg.calls[since:] if c.method == "getStarTransactions"]
    assert len(calls) <= 2
    assert calls[0].params["offset"] == HISTORY - 1
    with ctx.db.session() as s:
        assert s.scalar(select(Payment.credits).where(Payment.charge_id == newer)) == 3
        assert billing.star_cursor(s).offset == HISTORY + 2
        assert billing.ledger_mismatches(s) == []


async def test_a_history_that_changed_under_the_kept_place_is_read_again(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    """The place names a transaction the history no longer holds there (another bot's token, a
    history Telegram rewrote): the whole history is read again, nothing credited twice."""
    charge = _lost_payment(ctx, tg, 9712)
    with ctx.db.session() as s:
        billing.save_star_cursor(s, billing.StarCursor(1, "in:stxSOMETHINGELSE"))
    run = await asyncio.to_thread(reconcile_once, ctx, create_metrics())
    assert [r.stars for r in run.credited] == [30]
    assert [c.params["offset"] for c in tg.calls_to("getStarTransactions")] == [0, 0]
    with ctx.db.session() as s:
        assert billing.star_cursor(s) == billing.StarCursor(1, f"in:{charge}")


async def test_a_chat_or_api_reconcile_waits_for_no_one_while_a_run_holds_the_lock(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    """/reconcile and the admin API take the same lock as the scheduled run: one at a time."""
    from core.errors import ReconcileRunning
    from telegram_ui import payments as telegram_payments

    _lost_payment(ctx, tg, 9713)
    with try_lock(ctx.db, LOCK_NAME) as held:
        assert held
        with pytest.raises(ReconcileRunning):
            await telegram_payments.reconcile(lambda: nullcontext(None), ctx.db, ctx.publisher)
    assert _credits(ctx, 9713) == 0
    assert tg.calls_to("getStarTransactions") == []


async def test_a_lost_payment_that_matches_no_invoice_credits_nothing_and_alerts(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    """Reconcile treats a payment naming no invoice the bot issued like the live update: kept
    with its reason, nothing credited, the admin chat told."""
    with ctx.db.session() as s:
        make_user(s, telegram_id=9714)
    tg.lost_payment(tg.user(9714, "Zed", "en"), "pk:999:1000000:1:1:0", 1)
    run = await asyncio.to_thread(reconcile_once, ctx, create_metrics())
    assert (run.outcome, run.credited) == ("done", [])
    [kept] = run.found.unmatched
    assert (kept.unmatched, kept.credits) == ("no_invoice", 0)
    assert _credits(ctx, 9714) == 0
    notice = ntranslate(
        None, "admin.reconcile_unmatched", 1, stars=1, payments=str(kept.payment_id)
    )
    await tg.wait_text(ADMIN_CHAT, notice)
    await tg.idle()
    assert tg.sent_texts(9714) == []
