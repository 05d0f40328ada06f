"""Blob bytes are deleted only after the transaction that dropped their last row commits."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from db.models import Photo
from db.session import Database
from domain.photos import delete_selfie
from tests.utils.factories import make_selfie, make_user


def test_a_rollback_keeps_the_bytes_and_a_commit_deletes_them(
    committed_db: Database, blobs: LocalBlobStore
) -> None:
    with committed_db.session() as s:
        user = make_user(s, 7401)
        photo = make_selfie(s, blobs, user)
        user_id, photo_id, key = user.id, photo.id, photo.sha256

    class Later(Exception):
        pass

    def delete_then_fail(s: Session) -> None:
        assert delete_selfie(s, blobs, user_id, photo_id)
        assert blobs.exists(key)  # still there inside the transaction
        raise Later  # a later step of the same transaction fails: everything rolls back

    with pytest.raises(Later):
        committed_db.call(delete_then_fail)

    with committed_db.session() as s:
        assert s.get(Photo, photo_id) is not None
    assert blobs.exists(key)  # the surviving row still has its bytes

    with committed_db.session() as s:
        assert delete_selfie(s, blobs, user_id, photo_id)
        assert blobs.exists(key)
    assert not blobs.exists(key)
