"""The chat's conversation state per user, stored in `user_sessions` (not process memory).

A small explicit state machine: `state` says what the next photo or text means; `data` holds
what the user picked so far. Because it lives in the database, a restarted bot (or another
replica behind the webhook) continues the conversation where it was.

Keys of `data`:
- `style_id`: the style chosen in the picker, kept until changed (a selfie sent later starts it)
- `pending_photo_id`: a selfie with several faces whose face is not chosen yet
- `pose_style_id`: in AWAIT_POSE, the style to render the pose photo with
- `template_id` / `template_photo_id`, `template_faces`, `selected_faces`, `nonce`: template flow
- `train_photo_ids`, `train_name`, `train_trigger`: style training flow
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from db.models import UserSession
from db.repositories.users import UserSessionRepository

# Keys that belong to a multi-step flow and are dropped when the flow ends.
FLOW_KEYS = (
    "pose_style_id",
    "template_id",
    "template_photo_id",
    "template_faces",
    "selected_faces",
    "nonce",
    "train_photo_ids",
    "train_name",
    "train_trigger",
)


class State(enum.StrEnum):
    IDLE = "idle"
    AWAIT_POSE = "await_pose"
    AWAIT_TEMPLATE_PHOTO = "await_template_photo"
    TEMPLATE_FACES = "template_faces"
    TRAIN_IMAGES = "train_images"
    TRAIN_NAME = "train_name"
    TRAIN_TRIGGER = "train_trigger"
    TRAIN_CONFIRM = "train_confirm"


@dataclass
class Conversation:
    """A detached snapshot of one user's session."""

    state: State = State.IDLE
    data: dict[str, Any] = field(default_factory=dict)


def _snapshot(row: UserSession) -> Conversation:
    try:
        state = State(row.state)
    except ValueError:
        # A state written by an older release: start over rather than fail.
        state = State.IDLE
    return Conversation(state=state, data=dict(row.data or {}))


def load(session: Session, user_id: int) -> Conversation:
    """The user's conversation (idle and empty when new)."""
    return _snapshot(UserSessionRepository(session).load(user_id))


def _locked(session: Session, user_id: int) -> UserSession:
    repo = UserSessionRepository(session)
    row = session.get(UserSession, user_id, with_for_update=True, populate_existing=True)
    return row if row is not None else repo.load(user_id)


def update(
    session: Session,
    user_id: int,
    state: State | None = None,
    /,
    *,
    end_flow: bool = False,
    **changes: Any,
) -> Conversation:
    """Change the state and/or data under a row lock; `None` values remove keys.

    `end_flow` drops every flow key (FLOW_KEYS) and, unless a state is given, returns to IDLE.
    """
    row = _locked(session, user_id)
    data = dict(row.data or {})
    if end_flow:
        for key in FLOW_KEYS:
            data.pop(key, None)
        state = state or State.IDLE
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    new_state = state.value if state is not None else row.state
    UserSessionRepository(session).save(row, new_state, data)
    return _snapshot(row)


def template_pending(conv: Conversation, nonce: int) -> bool:
    """Whether the conversation waits for the face choice of the template keyboard `nonce`."""
    return conv.state is State.TEMPLATE_FACES and conv.data.get("nonce") == nonce


def toggle_template_face(
    session: Session, user_id: int, nonce: int, index: int
) -> tuple[int, list[int]]:
    """Flip one face in the pending selection under the row lock: (faces, selected), or
    (0, []) when the keyboard is stale."""
    conv = update(session, user_id)  # locks the row before reading the selection
    count = int(conv.data.get("template_faces", 0))
    if not template_pending(conv, nonce) or not 0 <= index < count:
        return 0, []
    selected = sorted(set(conv.data.get("selected_faces", [])) ^ {index})
    update(session, user_id, selected_faces=selected)
    return count, selected
