"""Templates for fixed-template portraits: ordering, visibility and slugs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, func, or_, select

from db.models import Template
from db.repositories.base import RepositoryBase


class TemplateRepository(RepositoryBase[Template]):
    model = Template

    def by_slug(self, slug: str) -> Template | None:
        return self.session.scalar(select(Template).where(Template.slug == slug))

    def ordered(self, *, enabled_only: bool = False) -> Select[Template]:
        """A select of templates in display order (position, then id)."""
        stmt = select(Template).order_by(Template.position, Template.id)
        if enabled_only:
            stmt = stmt.where(Template.enabled.is_(True))
        return stmt

    def visible_to(self, user_id: int | None) -> Sequence[Template]:
        """Enabled templates a user may pick: public ones plus their own."""
        stmt = self.ordered(enabled_only=True)
        if user_id is None:
            stmt = stmt.where(Template.owner_id.is_(None))
        else:
            stmt = stmt.where(or_(Template.owner_id.is_(None), Template.owner_id == user_id))
        return self.session.scalars(stmt).all()

    def next_position(self) -> int:
        """A position after every existing template."""
        return int(self.session.scalar(select(func.max(Template.position))) or 0) + 1
