"""End to end, "Use a pose": real workers on the tiny profile, whose OpenPose annotator has random
weights and finds nobody. A pose photo is therefore refused with a translated reason and no
portraits; a ready OpenPose skeleton map is used as is (no annotator, no preview) and gives an
album."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.utils.chat import JOB_SECONDS, prefix, press, send_selfie, text, use_style
from tests.utils.fake_pose import ARMS_UP, skeleton_map
from tests.utils.stack import Stack, face

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


def map_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skeleton_map(ARMS_UP)).save(buf, "PNG")
    return buf.getvalue()


class TestUsePose:
    async def test_photo_without_person_refused_then_a_map_is_painted(self, stack: Stack) -> None:
        tg = stack.tg
        kim = tg.user(810101, "Kim", "ru")
        picker = await send_selfie(tg, kim, "woman_pose1.png")
        await use_style(tg, kim, picker)
        await stack.wait(lambda: stack.albums(kim.id), JOB_SECONDS, "first album")
        follow_up = await tg.wait_text(kim.id, text(kim, "job.next"), within=30)
        next_message = tg.bot_messages(kim.id)[-1]
        assert next_message["text"] == follow_up.params["text"]

        # A photo: the tiny annotator finds nobody, so the job fails before painting.
        since = await press(tg, kim, next_message, text(kim, "btn.use_pose"))
        await tg.wait_text(kim.id, text(kim, "pose.send"), since=since)
        tg.send_photo(kim, face("man_pose3.png"))
        await tg.wait_text(kim.id, prefix(kim, "job.queued"), since=since, within=60)
        reason = text(kim, "error.pose_no_person")
        await tg.wait_text(kim.id, text(kim, "job.failed", reason=reason), within=JOB_SECONDS)
        photo_job = stack.jobs_of(kim.id)[-1]
        await stack.wait(
            lambda: stack.job(photo_job.id).delivered_at is not None, 60, "failure delivered"
        )
        photo_job = stack.job(photo_job.id)
        assert photo_job.error_code == "pose_no_person"
        assert photo_job.result_blobs == []
        assert "pose_map_blob" not in photo_job.params
        assert len(stack.albums(kim.id)) == 1

        # A ready skeleton map: used as is, an album follows and no preview is sent.
        since = await press(tg, kim, next_message, text(kim, "btn.use_pose"))
        await tg.wait_text(kim.id, text(kim, "pose.send"), since=since)
        tg.send_photo(kim, map_png())
        await tg.wait_text(kim.id, prefix(kim, "job.queued"), since=since, within=60)
        await stack.wait(lambda: len(stack.albums(kim.id)) == 2, JOB_SECONDS, "album of the map")
        map_job = stack.jobs_of(kim.id)[-1]
        await stack.wait(
            lambda: stack.job(map_job.id).delivered_at is not None, 60, "album delivered"
        )
        map_job = stack.job(map_job.id)
        assert map_job.error_code is None
        assert len(map_job.result_blobs) == 2
        assert "pose_map_blob" not in map_job.params
        captions = [c.get("caption") for c in stack.results(kim.id, "sendPhoto")]
        assert text(kim, "pose.found") not in captions
