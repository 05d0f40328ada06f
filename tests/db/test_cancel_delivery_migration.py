"""Migration b4d8e2a6c913: cancelled jobs from before it count as told (the old code showed
them, or had no way to), so the first sweep after the upgrade, which now re-sends untold
cancellations, sends none of the old ones; other rows are left as they were."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from service.migrate import upgrade
from tests.db.conftest import insert_user

BEFORE = "9e4a6c2f7b15"
AFTER = "b4d8e2a6c913"


def test_old_cancellations_count_as_told(urls: list[str]) -> None:
    for url in urls:
        upgrade(url, BEFORE)
        engine = create_engine(url)
        rows = [
            # (status, finished, delivered, delivery error)
            ("cancelled", True, False, None),
            ("cancelled", False, False, None),
            ("cancelled", True, True, None),
            ("cancelled", True, False, "Forbidden: bot was blocked by the user"),
            ("succeeded", True, False, None),
            ("failed", True, False, None),
            ("queued", False, False, None),
        ]
        with engine.begin() as conn:
            insert_user(conn)
            for n, (status, finished, delivered, error) in enumerate(rows, start=1):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, user_id, kind, status, params, progress, attempts,"
                        " result_blobs, result_meta, cancel_requested, created_at, updated_at,"
                        " finished_at, delivered_at, delivery_error) VALUES (:id, 1, 'portrait',"
                        " :status, '{}', 0, 1, '[]', '{}', false, CURRENT_TIMESTAMP,"
                        " CURRENT_TIMESTAMP, CASE WHEN :finished THEN CURRENT_TIMESTAMP END,"
                        " CASE WHEN :delivered THEN CURRENT_TIMESTAMP END, :error)"
                    ),
                    {
                        "id": n,
                        "status": status,
                        "finished": finished,
                        "delivered": delivered,
                        "error": error,
                    },
                )
        upgrade(url, AFTER)
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT delivered_at IS NOT NULL FROM jobs ORDER BY id")
            ).scalars()
            assert list(found) == [True, True, True, False, False, False, False], url
        engine.dispose()
