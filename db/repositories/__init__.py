"""Per-entity repositories."""

from db.repositories.base import RepositoryBase
from db.repositories.jobs import JobRepository
from db.repositories.users import UserRepository, UserSessionRepository

__all__ = ["JobRepository", "RepositoryBase", "UserRepository", "UserSessionRepository"]
