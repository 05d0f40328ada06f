"""The one blob reference check: every column that can hold a blob key counts."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Job, JobKind, StyleTraining, Template
from db.repositories.blobs import BlobReferenceRepository
from tests.utils.factories import make_style, make_user


def key(n: int) -> str:
    return f"{n:064x}"


def test_every_reference_counts(session: Session) -> None:
    user = make_user(session, 31)
    make_style(session, "a", lora_blob=key(1), thumbnail_blob=key(2), extra={"kohya_blob": key(3)})
    session.add(
        Template(
            slug="t",
            names={"en": "t"},
            image_blob=key(4),
            thumbnail_blob=key(5),
            width=1,
            height=1,
            faces=[],
            origin="uploaded",
        )
    )
    session.add(
        Job(
            user_id=user.id,
            kind=JobKind.PORTRAIT,
            params={"pose_blob": key(6), "pose_map_blob": key(7)},
            result_blobs=[key(8)],
        )
    )
    session.add(
        StyleTraining(
            user_id=user.id, name="n", trigger_word="tw", image_blobs=[key(9)], captions=[]
        )
    )
    session.flush()
    refs = BlobReferenceRepository(session)
    keys = [key(n) for n in range(1, 11)]
    assert refs.unreferenced([*keys, key(10)]) == [key(10)]
    assert all(refs.is_referenced(k) for k in keys[:9])
    # The garbage collection's one-pass view agrees with the per-key check.
    every = refs.all_referenced()
    assert set(keys[:9]) <= every
    assert key(10) not in every
