"""Migration 7c3e9a41d2b8 (issue 12, item 3): rows in the old `delivered` status get their true
outcome back (an error code: failed, otherwise succeeded) and keep `delivered_at`; jobs that
were never delivered are left as they were."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from service.migrate import upgrade
from tests.db.conftest import insert_user

BEFORE = "5b1f0c2d9e71"
AFTER = "7c3e9a41d2b8"


def test_delivered_rows_get_their_outcome_back(urls: list[str]) -> None:
    for url in urls:
        upgrade(url, BEFORE)
        engine = create_engine(url)
        rows = [
            # (status, error code, delivered): the status after the upgrade
            ("delivered", None, True),
            ("delivered", "no_face", True),
            ("succeeded", None, False),
            ("failed", "internal", False),
            ("cancelled", None, False),
            ("running", None, False),
        ]
        with engine.begin() as conn:
            insert_user(conn)
            for n, (status, code, delivered) in enumerate(rows, start=1):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, user_id, kind, status, params, progress, attempts,"
                        " error_code, result_blobs, result_meta, cancel_requested, created_at,"
                        " updated_at, delivered_at) VALUES (:id, 1, 'portrait', :status, '{}',"
                        " 0, 1, :code, '[]', '{}', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP,"
                        " CASE WHEN :delivered THEN CURRENT_TIMESTAMP END)"
                    ),
                    {"id": n, "status": status, "code": code, "delivered": delivered},
                )
        upgrade(url, AFTER)
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT status, delivered_at IS NOT NULL, delivery_attempts, delivery_error"
                    " FROM jobs ORDER BY id"
                )
            ).all()
        assert [tuple(r) for r in found] == [
            ("succeeded", True, 1, None),
            ("failed", True, 1, None),
            ("succeeded", False, 0, None),
            ("failed", False, 0, None),
            ("cancelled", False, 0, None),
            ("running", False, 0, None),
        ], url
        engine.dispose()
