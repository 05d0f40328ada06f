"""What a use case publishes once its transaction has committed: the outbox and its port.

Use cases never talk to the broker. They record rows (a queued job, a pending webhook delivery,
a queued broadcast) and note their ids here, on the caller's `Session`; after the commit the
front end hands them to a `Publisher` (`tasks.dispatch.CeleryPublisher` in production), through
`transact` (sync) or `transact_async`. If publishing fails or the process dies between commit
and publish, nothing is lost: the rows are committed, and the periodic sweep re-sends queued
jobs without `dispatched_at`, pending deliveries never attempted and stalled broadcasts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy.orm import Session

from db.session import Database

P = ParamSpec("P")
T = TypeVar("T")

# Where the ids wait in `Session.info` until the caller has committed.
_KEY = "facechain_outbox"


@dataclass
class Outbox:
    """Ids of committed rows whose task is still to be published."""

    jobs: list[int] = field(default_factory=list)
    deliveries: list[int] = field(default_factory=list)
    broadcasts: list[int] = field(default_factory=list)
    # Jobs that ended outside a worker whose outcome the chat still has to be told.
    results: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.deliveries or self.broadcasts or self.results)


class Publisher(Protocol):
    """The port through which committed work reaches the workers."""

    def publish(self, outbox: Outbox) -> None:
        """Publish every task; a broker failure only delays them (the sweep re-sends)."""

    def ping(self) -> None:
        """Raise if the broker cannot be reached now (readiness)."""


def pending(session: Session) -> Outbox:
    """The outbox of this transaction (created on first use)."""
    outbox: Outbox = session.info.setdefault(_KEY, Outbox())
    return outbox


def take(session: Session) -> Outbox:
    """The outbox of this transaction, emptied (call before the session closes)."""
    outbox: Outbox = session.info.pop(_KEY, None) or Outbox()
    return outbox


def _collect(
    session: Session, fn: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[T, Outbox]:
    result = fn(session, *args, **kwargs)
    return result, take(session)


def transact(
    db: Database,
    publisher: Publisher,
    fn: Callable[Concatenate[Session, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run `fn(session, ...)` in one transaction, then publish what it recorded."""
    result, outbox = db.call(_collect, fn, args, kwargs)
    if outbox:
        publisher.publish(outbox)
    return result


async def transact_async(
    db: Database,
    publisher: Publisher,
    fn: Callable[Concatenate[Session, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`transact` for async callers: the transaction and the publishing run off the loop."""
    result, outbox = await db.run(_collect, fn, args, kwargs)
    if outbox:
        await asyncio.to_thread(publisher.publish, outbox)
    return result
