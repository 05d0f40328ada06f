"""Migration 9e4a6c2f7b15 (paid generations): jobs made before it keep holding the quota slots
the old rule gave them, except failures that were not the user's."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from service.migrate import upgrade
from tests.db.conftest import insert_user


def test_old_jobs_keep_their_quota_slots(urls: list[str]) -> None:
    for url in urls:
        upgrade(url, "8d2f5b7a1c34")
        engine = create_engine(url)
        rows = [
            # (kind, status, error code): charge and given back after the upgrade
            ("portrait", "succeeded", None),
            ("portrait", "failed", "no_face"),
            ("template", "failed", "internal"),
            ("portrait", "cancelled", None),
            ("upscale", "succeeded", None),
            ("portrait", "queued", None),
        ]
        with engine.begin() as conn:
            insert_user(conn)
            for n, (kind, status, code) in enumerate(rows, start=1):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, user_id, kind, status, params, progress, attempts,"
                        " error_code, result_blobs, result_meta, cancel_requested,"
                        " delivery_attempts, created_at, updated_at, finished_at) VALUES"
                        " (:id, 1, :kind, :status, '{}', 0, 0, :code, '[]', '{}', false, 0,"
                        " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {"id": n, "kind": kind, "status": status, "code": code},
                )
        upgrade(url)
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT charge, charge_returned_at IS NOT NULL, charge_credits, credits"
                    " FROM jobs JOIN users ON users.id = jobs.user_id ORDER BY jobs.id"
                )
            ).all()
        assert [(r[0], bool(r[1])) for r in found] == [
            ("quota", False),
            ("quota", False),
            ("quota", True),
            (None, False),
            (None, False),
            ("quota", False),
        ], url
        assert {(r[2], r[3]) for r in found} == {(0, 0)}
        engine.dispose()
