"""Style management: uploads validated (and refused with reasons), enable/disable, order,
categories, edits, deletion, visibility of trained styles."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.errors import Forbidden, InvalidStyleUpload, NotFound
from db.models import AuditEntry, BaseModelName, StyleOrigin
from db.repositories.styles import StyleRepository
from domain.loras import resolve_style_lora, validate_lora_bytes
from domain.styles import (
    add_trained_style,
    add_uploaded_style,
    delete_style,
    list_categories,
    move_style,
    reorder_styles,
    set_style_category,
    set_style_enabled,
    update_style,
)
from facechain.lora import parse_lora
from tests.domain.lora_data import (
    SD15_TARGETS,
    diffusers_lora,
    kohya_lora,
    legacy_pickle_bytes,
    to_bytes,
    torch_pickle_bytes,
)
from tests.utils.factories import make_style, make_user


def png(color: tuple[int, int, int] = (200, 80, 40), size: tuple[int, int] = (800, 600)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def upload(session: Session, blobs: LocalBlobStore, lora: bytes, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "lora_bytes": lora,
        "thumbnail_bytes": png(),
        "names": {"en": "Neon night", "ru": "Неоновая ночь"},
        "prompt": "neon lights, night city",
        "base_model": "majic",
        "weight": 0.6,
        "category": "fashion",
        "actor": "api",
    }
    args.update(kw)
    return add_uploaded_style(session, blobs, **args)  # type: ignore[arg-type]


class TestUpload:
    @pytest.mark.parametrize("builder", [kohya_lora, diffusers_lora], ids=["kohya", "diffusers"])
    def test_valid_lora_becomes_a_usable_style(
        self,
        session: Session,
        blobs: LocalBlobStore,
        tmp_path,
        builder,  # type: ignore[no-untyped-def]
    ) -> None:
        data = to_bytes(builder())
        style = upload(session, blobs, data)
        assert style.origin is StyleOrigin.UPLOADED
        assert style.enabled
        assert style.slug == "uploaded-neon-night"
        assert style.base_model is BaseModelName.MAJIC
        assert style.prompt_template == "style"
        assert style.names == {"en": "Neon night", "ru": "Неоновая ночь"}
        assert blobs.get(style.lora_blob) == data
        with Image.open(io.BytesIO(blobs.get(style.thumbnail_blob))) as thumb:
            assert thumb.format == "JPEG"
            assert max(thumb.size) == 512
        assert style.extra["lora_rank"] == 1
        assert style.extra["lora_modules"] == len(SD15_TARGETS)
        audit = session.scalar(select(AuditEntry).where(AuditEntry.action == "style.upload"))
        assert audit is not None
        assert audit.actor == "api"

        # Usable: the engine's loader reads the cached file back.
        path = resolve_style_lora(style, tmp_path / "models", blobs)
        assert path is not None
        assert path.read_bytes() == data
        layers = parse_lora(path).layers
        assert len(layers) == len(SD15_TARGETS)
        assert {layer.component for layer in layers} == {"unet", "text_encoder"}

    def test_second_upload_with_the_same_name_gets_its_own_slug(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        first = upload(session, blobs, to_bytes(kohya_lora()))
        second = upload(session, blobs, to_bytes(kohya_lora(seed=1)))
        assert (first.slug, second.slug) == ("uploaded-neon-night", "uploaded-neon-night-2")
        assert second.position > first.position

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"", "empty"),
            (torch_pickle_bytes(), "pickled checkpoints"),
            (legacy_pickle_bytes(), "pickled checkpoints"),
            (b"\x00garbage" * 100, "safetensors"),
            (
                to_bytes(
                    {"model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(2, 2)}
                ),
                "unrecognised tensor name",
            ),
            (
                to_bytes(
                    {
                        "lora_unet_no_such_block_to_q.lora_down.weight": torch.zeros(1, 320),
                        "lora_unet_no_such_block_to_q.lora_up.weight": torch.zeros(320, 1),
                    }
                ),
                "no module",
            ),
            (
                to_bytes(
                    {
                        k: (v[:, :300] if k.endswith("lora_down.weight") else v)
                        for k, v in kohya_lora().items()
                    }
                ),
                "does not fit",
            ),
            (
                to_bytes({k: v for k, v in kohya_lora().items() if "lora_up" not in k}),
                "needs both up and down",
            ),
            (
                to_bytes(
                    {
                        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.zeros(
                            4, 320, 3, 3
                        ),
                        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.zeros(
                            320, 4, 1, 1
                        ),
                    }
                ),
                "LoCon",
            ),
        ],
        ids=[
            "empty",
            "torch-ckpt",
            "pickle",
            "garbage",
            "ldm-keys",
            "wrong-keys",
            "wrong-shapes",
            "half-pairs",
            "locon",
        ],
    )
    def test_malformed_lora_is_refused_with_a_reason(
        self, session: Session, blobs: LocalBlobStore, data: bytes, reason: str
    ) -> None:
        with pytest.raises(InvalidStyleUpload, match=reason) as info:
            upload(session, blobs, data)
        assert info.value.code == "invalid_lora"
        assert StyleRepository(session).count() == 0
        assert not [p for p in blobs.root.rglob("*") if p.is_file()]

    def test_too_big_is_refused(self, session: Session, blobs: LocalBlobStore) -> None:
        data = to_bytes(kohya_lora())
        with pytest.raises(InvalidStyleUpload, match="limit is 1024"):
            upload(session, blobs, data, max_lora_bytes=1024)
        # The service default comes from LIMITS_MAX_LORA_BYTES.
        with pytest.raises(InvalidStyleUpload, match="limit is 2048"):
            validate_lora_bytes(data, max_bytes=2048)

    @pytest.mark.parametrize(
        ("field", "value", "reason"),
        [
            ("thumbnail_bytes", b"not an image", "thumbnail"),
            ("names", {"en": "  "}, "needs a name"),
            ("names", {"fr": "Nuit"}, "unknown name language"),
            ("prompt", " ", "prompt"),
            ("base_model", "sdxl", "unknown base model"),
            ("weight", 1.5, "weight"),
            ("category", "Bad Category!", "category"),
        ],
    )
    def test_bad_metadata_is_refused(
        self, session: Session, blobs: LocalBlobStore, field: str, value: object, reason: str
    ) -> None:
        with pytest.raises(InvalidStyleUpload, match=reason):
            upload(session, blobs, to_bytes(kohya_lora()), **{field: value})

    def test_truncated_safetensors_is_refused(self) -> None:
        data = to_bytes(kohya_lora())
        with pytest.raises(InvalidStyleUpload, match="safetensors"):
            validate_lora_bytes(data[: len(data) // 2])


class TestManagement:
    def test_enable_disable_category_update(self, session: Session) -> None:
        style = make_style(session, slug="s1", category="costume")
        set_style_enabled(session, style.id, False, actor="tg:1")
        assert not style.enabled
        assert list_categories(session) == []
        set_style_enabled(session, style.id, True, actor="tg:1")
        set_style_category(session, style.id, "fantasy", actor="tg:1")
        assert list_categories(session, "ru") == [("fantasy", "Фэнтези")]
        with pytest.raises(InvalidStyleUpload):
            set_style_category(session, style.id, "", actor="tg:1")
        update_style(session, style.id, actor="api", names={"zh": "新"}, prompt="p2", weight=0.3)
        assert style.names["zh"] == "新"
        assert style.names["en"] == "Armor"
        assert (style.prompt, style.lora_weight) == ("p2", 0.3)
        actions = session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
        assert actions == ["style.disable", "style.enable", "style.category", "style.update"]

    def test_reorder_and_move(self, session: Session) -> None:
        a, _b, c, d = (make_style(session, slug=s, position=i) for i, s in enumerate("abcd", 1))
        reorder_styles(session, [c.id, a.id], actor="api")
        repo = StyleRepository(session)
        assert [s.slug for s in repo.list(repo.ordered())] == ["c", "a", "b", "d"]
        move_style(session, d.id, 1, actor="api")
        assert [s.slug for s in repo.list(repo.ordered())] == ["d", "c", "a", "b"]
        move_style(session, d.id, 99, actor="api")
        assert [s.slug for s in repo.list(repo.ordered())] == ["c", "a", "b", "d"]
        with pytest.raises(NotFound):
            reorder_styles(session, [12345], actor="api")

    def test_delete_uploaded_removes_unused_blobs(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        style = upload(session, blobs, to_bytes(kohya_lora()))
        twin = upload(session, blobs, to_bytes(kohya_lora()))  # same LoRA bytes, same blob
        lora_key, thumb_key = style.lora_blob, style.thumbnail_blob
        delete_style(session, blobs, style.id, actor="api")
        session.commit()
        assert blobs.exists(lora_key)
        assert blobs.exists(thumb_key)
        delete_style(session, blobs, twin.id, actor="api")
        assert blobs.exists(lora_key)  # bytes go only once the deletion commits
        session.commit()
        assert not blobs.exists(lora_key)
        assert not blobs.exists(thumb_key)
        assert StyleRepository(session).count() == 0

    def test_catalog_styles_cannot_be_deleted(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        style = make_style(session)
        with pytest.raises(Forbidden, match="disable it instead"):
            delete_style(session, blobs, style.id, actor="api")

    def test_trained_style_is_visible_to_its_owner_only(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        owner, other = make_user(session, 1), make_user(session, 2)
        public = make_style(session, slug="public")
        trained = add_trained_style(
            session,
            blobs,
            lora_bytes=b"lora",
            kohya_bytes=b"kohya",
            thumbnail_bytes=png(),
            name="My look",
            prompt="mylook",
            base_model="film",
            owner_id=owner.id,
            training_id=7,
            trigger_word="mylook",
        )
        assert trained.slug == "trained-7-my-look"
        assert trained.origin is StyleOrigin.TRAINED
        assert trained.base_model is BaseModelName.FILM
        assert trained.lora_weight == 0.8
        assert blobs.get(trained.extra["kohya_blob"]) == b"kohya"
        repo = StyleRepository(session)
        assert [s.slug for s in repo.visible_to(owner.id)] == ["public", trained.slug]
        assert [s.slug for s in repo.visible_to(other.id)] == ["public"]
        assert [s.slug for s in repo.visible_to(None)] == [public.slug]
        assert repo.owned_by(owner.id) == [trained]
