"""Pure inline-keyboard builders: data in, `InlineKeyboardMarkup` out (no I/O, no state).

The io worker imports `cancel_job_keyboard` and `result_keyboard` to edit the status message and
to follow the album, so their signatures are a contract."""

from __future__ import annotations

from collections.abc import Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, WebAppInfo

from domain.catalog import CATEGORIES, category_name
from telegram_ui import callbacks as cb
from telegram_ui.i18n import LANGUAGE_NAMES, ntranslate, translate

# /history shows this many jobs a page.
HISTORY_PAGE = 5


def _button(text: str, data: cb.CallbackData) -> InlineKeyboardButton:
    return InlineKeyboardButton(text, callback_data=data.pack())


def category_label(language: str, category: str) -> str:
    """A category's display name (the catalog's names, else the slug capitalised)."""
    if category in CATEGORIES:
        return category_name(category, language)
    return category.replace("_", " ").replace("-", " ").capitalize()


def cancel_job_keyboard(job_id: int, language: str) -> InlineKeyboardMarkup:
    """The Cancel button under a job's status message."""
    return InlineKeyboardMarkup(
        [[_button(translate(language, "btn.cancel"), cb.CancelJob(job_id))]]
    )


def result_keyboard(
    job_id: int, style_id: int | None, language: str, count: int = 0
) -> InlineKeyboardMarkup:
    """Buttons after an album: more like this, another style (or template), use a pose, and
    for portraits one "HD n" button per image (`count` images, at most 8 a row)."""
    more = _button(translate(language, "btn.more_like_this"), cb.MoreLikeThis(job_id))
    if style_id is None:
        # Template results: there is no style to vary and no pose to apply.
        return InlineKeyboardMarkup(
            [[more, _button(translate(language, "btn.another_template"), cb.AnotherStyle(job_id))]]
        )
    rows = [
        [more, _button(translate(language, "btn.another_style"), cb.AnotherStyle(job_id))],
        [_button(translate(language, "btn.use_pose"), cb.UsePose(job_id))],
    ]
    hd = [
        _button(translate(language, "btn.hd", n=i + 1), cb.Upscale(job_id, i))
        for i in range(count)
    ]
    rows += [hd[i : i + 8] for i in range(0, len(hd), 8)]
    return InlineKeyboardMarkup(rows)


def language_keyboard(current: str) -> InlineKeyboardMarkup:
    """One button per supported language, the current one marked."""
    return InlineKeyboardMarkup(
        [
            [
                _button(("✓ " if code == current else "") + name, cb.SetLanguage(code))
                for code, name in LANGUAGE_NAMES.items()
            ]
        ]
    )


# /subject buttons: stored value ("auto" = None in `users.subject`) -> label key, in rows.
AUTO_SUBJECT = "auto"
SUBJECT_LABELS = {
    AUTO_SUBJECT: "subject.auto",
    "man": "subject.man",
    "woman": "subject.woman",
    "boy": "subject.boy",
    "girl": "subject.girl",
    "mature_man": "subject.mature_man",
    "mature_woman": "subject.mature_woman",
}
_SUBJECT_ROWS = (
    (AUTO_SUBJECT,),
    ("man", "woman"),
    ("boy", "girl"),
    ("mature_man", "mature_woman"),
)


def subject_label(language: str, subject: str | None) -> str:
    """A subject's display name (None = auto)."""
    key = SUBJECT_LABELS.get(subject or AUTO_SUBJECT, SUBJECT_LABELS[AUTO_SUBJECT])
    return translate(language, key)


def subject_keyboard(current: str | None, language: str) -> InlineKeyboardMarkup:
    """Auto plus the six subjects, the current choice (None = auto) marked."""
    chosen = current or AUTO_SUBJECT
    return InlineKeyboardMarkup(
        [
            [
                _button(
                    ("✓ " if value == chosen else "") + subject_label(language, value),
                    cb.SetSubject(value),
                )
                for value in row
            ]
            for row in _SUBJECT_ROWS
        ]
    )


def face_choice_keyboard(photo_id: int, count: int) -> InlineKeyboardMarkup:
    """Numbered buttons, one per face drawn on the preview (labels are 1-based)."""
    buttons = [_button(str(i + 1), cb.ChooseFace(photo_id, i)) for i in range(count)]
    return InlineKeyboardMarkup([buttons[i : i + 5] for i in range(0, len(buttons), 5)])


def _carousel_row(
    page: type[cb.StylePage] | type[cb.TemplatePage], category: str, index: int, total: int
) -> list[InlineKeyboardButton]:
    """◀ position ▶, wrapping around at both ends."""
    return [
        _button("◀", page(category, (index - 1) % total)),
        _button(f"{index + 1}/{total}", cb.Noop("pos")),
        _button("▶", page(category, (index + 1) % total)),
    ]


def style_carousel_keyboard(
    style_id: int,
    category: str,
    index: int,
    total: int,
    language: str,
    miniapp_url: str | None = None,
) -> InlineKeyboardMarkup:
    """The style carousel: ◀ n/N ▶, categories, and "Use this style"; with the Mini App
    configured, "Open gallery" beside the categories."""
    categories = _button(
        translate(language, "btn.categories")
        + (f" · {category_label(language, category)}" if category != cb.ALL else ""),
        cb.StyleCategories(index),
    )
    middle = [categories]
    if miniapp_url:
        middle.append(
            InlineKeyboardButton(
                translate(language, "btn.open_gallery"), web_app=WebAppInfo(miniapp_url)
            )
        )
    return InlineKeyboardMarkup(
        [
            _carousel_row(cb.StylePage, category, index, total),
            middle,
            [_button(translate(language, "btn.use_style"), cb.UseStyle(style_id))],
        ]
    )


def style_categories_keyboard(categories: Sequence[str], language: str) -> InlineKeyboardMarkup:
    """One button per category (two a row), then "All styles"."""
    buttons = [_button(category_label(language, c), cb.StylePage(c, 0)) for c in categories]
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    rows.append([_button(translate(language, "btn.all_categories"), cb.StylePage(cb.ALL, 0))])
    return InlineKeyboardMarkup(rows)


def template_carousel_keyboard(
    template_id: int, category: str, index: int, total: int, language: str
) -> InlineKeyboardMarkup:
    """The template carousel: ◀ n/N ▶, "Use this template", "My own photo"."""
    return InlineKeyboardMarkup(
        [
            _carousel_row(cb.TemplatePage, category, index, total),
            [_button(translate(language, "btn.use_template"), cb.UseTemplate(template_id))],
            [_button(translate(language, "btn.own_template"), cb.OwnTemplate(index))],
        ]
    )


def template_faces_keyboard(
    count: int, selected: Sequence[int], language: str, nonce: int
) -> InlineKeyboardMarkup:
    """Toggle buttons per template face (✓ when selected) and a Start button."""
    buttons = [
        _button(("✓ " if i in selected else "") + str(i + 1), cb.ToggleTemplateFace(nonce, i))
        for i in range(count)
    ]
    rows = [buttons[i : i + 5] for i in range(0, len(buttons), 5)]
    rows.append([_button(translate(language, "btn.start_template"), cb.StartTemplate(nonce))])
    return InlineKeyboardMarkup(rows)


def photos_keyboard(photo_ids: Sequence[int], language: str) -> InlineKeyboardMarkup:
    """A delete button per stored selfie, numbered as in the /photos list."""
    return InlineKeyboardMarkup(
        [
            [_button(translate(language, "btn.delete_photo", n=n), cb.DeletePhoto(pid))]
            for n, pid in enumerate(photo_ids, start=1)
        ]
    )


def forget_keyboard(language: str) -> InlineKeyboardMarkup:
    """Confirm or keep, for /forget."""
    return InlineKeyboardMarkup(
        [
            [
                _button(translate(language, "btn.forget_yes"), cb.Forget("yes")),
                _button(translate(language, "btn.forget_no"), cb.Forget("no")),
            ]
        ]
    )


def train_confirm_keyboard(language: str) -> InlineKeyboardMarkup:
    """Start or abandon a style training."""
    return InlineKeyboardMarkup(
        [
            [
                _button(translate(language, "btn.train_yes"), cb.TrainConfirm("yes")),
                _button(translate(language, "btn.train_no"), cb.TrainConfirm("no")),
            ]
        ]
    )


def history_keyboard(
    shows: Sequence[tuple[int, int]], offset: int, has_more: bool, language: str
) -> InlineKeyboardMarkup | None:
    """A "show again" button per (list number, job id) with results, then newer/older paging."""
    rows = [
        [_button(translate(language, "btn.show_results", n=n), cb.HistoryShow(job_id))]
        for n, job_id in shows
    ]
    paging = []
    if offset > 0:
        paging.append(
            _button(
                translate(language, "btn.newer"), cb.HistoryPage(max(0, offset - HISTORY_PAGE))
            )
        )
    if has_more:
        paging.append(
            _button(translate(language, "btn.older"), cb.HistoryPage(offset + HISTORY_PAGE))
        )
    if paging:
        rows.append(paging)
    return InlineKeyboardMarkup(rows) if rows else None


def buy_keyboard(language: str) -> InlineKeyboardMarkup:
    """The one "Buy credits" button (under the "free quota used up" reply)."""
    return InlineKeyboardMarkup([[_button(translate(language, "btn.buy"), cb.ShowPacks())]])


def packs_keyboard(
    packs: Sequence[tuple[int, str, int, int]], language: str
) -> InlineKeyboardMarkup:
    """One button per pack on sale: (id, title, credits, Stars) in shop order."""
    return InlineKeyboardMarkup(
        [
            [
                _button(
                    ntranslate(language, "btn.pack", credits, title=title, stars=stars),
                    cb.BuyPack(pack_id),
                )
            ]
            for pack_id, title, credits, stars in packs
        ]
    )
