"""Use cases. Importing the package registers the job give-back hook of `domain.billing`
(`charges._settle_on_flush`, a Session `before_flush` listener), so every process that changes
jobs settles their charges."""

from domain import billing as _billing  # noqa: F401
