"""Factories for rows tests need: users, selfies (with real face detection), styles, jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.models import BaseModelName, Job, JobKind, Photo, PhotoKind, Style, StyleOrigin, User

FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"


def make_user(session: Session, telegram_id: int = 1001, **kw: Any) -> User:
    user = User(telegram_id=telegram_id, language=kw.pop("language", "en"), **kw)
    session.add(user)
    session.flush()
    return user


def face_rows(data: bytes) -> tuple[int, int, list[dict[str, Any]]]:
    """Width, height and `Photo.faces` rows of an image, from the real detector."""
    from facechain.faces import default_detector
    from facechain.imageio import load_image, to_rgb_array

    image = load_image(data)
    faces = default_detector().detect_faces(to_rgb_array(image))
    rows = [f.to_record() for f in faces]
    return image.width, image.height, rows


def make_selfie(
    session: Session, blobs: BlobStore, user: User, name: str = "man_pose1.png"
) -> Photo:
    data = (FACES / name).read_bytes()
    width, height, faces = face_rows(data)
    assert len(faces) == 1, f"{name} should have one face, found {len(faces)}"
    photo = Photo(
        user_id=user.id,
        kind=PhotoKind.SELFIE,
        sha256=blobs.put(data),
        size_bytes=len(data),
        width=width,
        height=height,
        faces=faces,
        selected_face=0,
    )
    session.add(photo)
    session.flush()
    return photo


def make_style(session: Session, slug: str = "test-armor", **kw: Any) -> Style:
    style = Style(
        slug=slug,
        names={"en": "Armor", "ru": "Доспехи", "zh": "盔甲风"},
        base_model=kw.pop("base_model", BaseModelName.FILM),
        prompt=kw.pop("prompt", "wearing silver armor, simple background"),
        prompt_template=kw.pop("prompt_template", "cloth"),
        lora_weight=kw.pop("lora_weight", 0.35),
        origin=kw.pop("origin", StyleOrigin.CATALOG),
        **kw,
    )
    session.add(style)
    session.flush()
    return style


def make_portrait_job(
    session: Session, user: User, photo: Photo, style: Style, **params: Any
) -> Job:
    job = Job(
        user_id=user.id,
        kind=JobKind.PORTRAIT,
        style_id=style.id,
        params={
            "photo_ids": [photo.id],
            "style_id": style.id,
            "num_images": 2,
            "seed": 7,
            "pose_blob": None,
            **params,
        },
    )
    session.add(job)
    session.flush()
    return job
