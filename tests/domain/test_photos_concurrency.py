"""Selfies stored at the same moment by one user (an album sent to the selfie flow, or two bot
replicas): none fails, and the kept count never exceeds LIMITS_MAX_SELFIES."""

from __future__ import annotations

import io
import threading

from PIL import Image
from sqlalchemy import func, select

from core.blobstore import LocalBlobStore
from core.settings import LimitsSettings
from db.models import Photo, PhotoKind
from db.session import Database
from domain.photos import TelegramFile, store_selfie
from facechain.quality import SelfieAnalysis
from tests.utils.factories import make_user


def _image(n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (n * 9 % 256, 40, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_concurrent_selfies_neither_fail_nor_exceed_the_limit(
    committed_db: Database, blobs: LocalBlobStore
) -> None:
    limits = LimitsSettings(max_selfies=2)
    with committed_db.session() as s:
        user_id = make_user(s, 7301).id
    face = {"box": [8.0, 8.0, 40.0, 40.0], "score": 0.99}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def store(n: int) -> None:
        try:
            start.wait()
            committed_db.call(
                store_selfie,
                blobs,
                user_id,
                _image(n),
                SelfieAnalysis(64, 64),
                [face],
                0,
                TelegramFile(f"F{n}", f"U{n}"),
                limits,
            )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with committed_db.session() as s:
        kept = s.scalar(
            select(func.count(Photo.id)).where(
                Photo.user_id == user_id, Photo.kind == PhotoKind.SELFIE
            )
        )
    assert kept == 2
