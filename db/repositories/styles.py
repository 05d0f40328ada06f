"""Styles and style trainings: ordering, visibility, categories and the catalog's slugs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, func, or_, select

from db.models import Style, StyleOrigin, StyleTraining
from db.repositories.base import RepositoryBase


class StyleRepository(RepositoryBase[Style]):
    model = Style

    def by_slug(self, slug: str) -> Style | None:
        return self.session.scalar(select(Style).where(Style.slug == slug))

    def ordered(
        self,
        *,
        enabled_only: bool = False,
        category: str | None = None,
        origin: StyleOrigin | None = None,
    ) -> Select[Style]:
        """A select of styles in display order (position, then id)."""
        stmt = select(Style).order_by(Style.position, Style.id)
        if enabled_only:
            stmt = stmt.where(Style.enabled.is_(True))
        if category is not None:
            stmt = stmt.where(Style.category == category)
        if origin is not None:
            stmt = stmt.where(Style.origin == origin)
        return stmt

    def visible_to(self, user_id: int | None, category: str | None = None) -> Sequence[Style]:
        """Enabled styles a user may pick: public ones plus their own trained styles."""
        stmt = self.ordered(enabled_only=True, category=category)
        if user_id is None:
            stmt = stmt.where(Style.owner_id.is_(None))
        else:
            stmt = stmt.where(or_(Style.owner_id.is_(None), Style.owner_id == user_id))
        return self.session.scalars(stmt).all()

    def owned_by(self, user_id: int) -> Sequence[Style]:
        """A user's own (trained) styles, newest first."""
        return self.session.scalars(
            select(Style).where(Style.owner_id == user_id).order_by(Style.id.desc())
        ).all()

    def categories(self, *, enabled_only: bool = True) -> list[str]:
        """Distinct categories in the order their first style appears."""
        stmt = select(Style.category, func.min(Style.position)).group_by(Style.category)
        if enabled_only:
            stmt = stmt.where(Style.enabled.is_(True))
        rows = self.session.execute(stmt.order_by(func.min(Style.position))).all()
        return [str(r[0]) for r in rows]

    def next_position(self) -> int:
        """A position after every existing style."""
        return int(self.session.scalar(select(func.max(Style.position))) or 0) + 1

    def catalog_with_lora(self) -> Sequence[Style]:
        """Catalog styles that reference a ModelScope LoRA."""
        return self.session.scalars(
            self.ordered(origin=StyleOrigin.CATALOG).where(Style.lora_model_id.is_not(None))
        ).all()

    def slug_taken(self, slug: str) -> bool:
        return self.session.scalar(select(Style.id).where(Style.slug == slug)) is not None

    def by_lora_blob(self, key: str) -> Sequence[Style]:
        """Styles whose LoRA is this blob (a blob is deleted only when none is left)."""
        return self.session.scalars(select(Style).where(Style.lora_blob == key)).all()

    def by_thumbnail_blob(self, key: str) -> Sequence[Style]:
        return self.session.scalars(select(Style).where(Style.thumbnail_blob == key)).all()


class StyleTrainingRepository(RepositoryBase[StyleTraining]):
    model = StyleTraining

    def by_job(self, job_id: int) -> StyleTraining | None:
        return self.session.scalar(select(StyleTraining).where(StyleTraining.job_id == job_id))

    def for_user(self, user_id: int, limit: int = 20) -> Sequence[StyleTraining]:
        return self.session.scalars(
            select(StyleTraining)
            .where(StyleTraining.user_id == user_id)
            .order_by(StyleTraining.id.desc())
            .limit(limit)
        ).all()

    def name_taken(self, user_id: int | None, name: str) -> bool:
        """Whether this user already has a training (hence a style) with this name."""
        stmt = select(StyleTraining.id).where(func.lower(StyleTraining.name) == name.lower())
        stmt = stmt.where(
            StyleTraining.user_id.is_(None)
            if user_id is None
            else StyleTraining.user_id == user_id
        )
        return self.session.scalar(stmt.limit(1)) is not None
