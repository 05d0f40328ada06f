"""The bot's peak memory rise for a large, tiny-to-send picture: a 40 MP 16-bit PNG document.

Such a file compresses to under 100 kB (a flat grey picture), so the upload limit lets it
through; what it costs is decoding. The bot runs as a real `facechain-bot bot` process (long
polling) against the fake Bot API server, a SQLite database and the embedded SQLite broker. A
small selfie is sent first so the face detector and the decoder are loaded; then the bot's
resident high-water mark is reset (`/proc/PID/clear_refs`), the 40 MP document is sent as a
file, and once the bot has answered, the rise of the high-water mark over the resident size
before it is printed. Goal: under 400 MiB (it was about 1.1 GiB when wide modes were converted
whole through float64 arrays).

Run: `python bench/decode_memory.py`. Last line: `bot_peak_rise_mib_40mp_16bit_png: X`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

USER_ID = 910_001
# 7300 x 5479 = 39.997 MP: just under the default LIMITS_MAX_IMAGE_PIXELS (40 MP).
WIDTH, HEIGHT = 7300, 5479


def flat_16bit_png(width: int, height: int) -> bytes:
    """A grey 16-bit PNG: 2 bytes a pixel decoded, a few dozen kB encoded."""
    grey = np.full((height, width), 33_000, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def memory_kib(pid: int, field: str) -> int:
    """A `Vm*` line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> int:
    """Reset a (child) process's resident high-water mark to its resident size; that size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kib(pid, "VmRSS")


async def measure(workdir: Path) -> dict[str, float]:
    """Start the bot, warm it up, send the picture; the figures."""
    from core.blobstore import LocalBlobStore
    from db.session import Database
    from service.migrate import upgrade
    from tests.utils.fake_telegram import FakeTelegram
    from tests.utils.stack import BotProcess, face, seed_styles, service_env

    url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    db = Database.from_url(url)
    data_dir = workdir / "data"
    seed_styles(db, LocalBlobStore(data_dir / "blobs"))
    db.dispose()
    picture = flat_16bit_png(WIDTH, HEIGHT)
    async with FakeTelegram() as tg:
        env = service_env(
            tg,
            database_url=url,
            broker_url=f"sqla+sqlite:///{workdir / 'broker.db'}",
            data_dir=data_dir,
        )
        bot = BotProcess(env, workdir / "bot.log")
        try:
            await bot.ready(180)
            pid = bot.proc.pid
            user = tg.user(USER_ID)
            since = len(tg.calls)
            tg.send_document(
                user, face("man_pose1.png"), file_name="me.png", mime_type="image/png"
            )
            await tg.wait_for("sendMessage", within=120, since=since, chat_id=USER_ID)
            await tg.idle(quiet=2.0, within=60)
            rss_before = reset_peak(pid)
            since = len(tg.calls)
            started = time.monotonic()
            tg.send_document(user, picture, file_name="big.png", mime_type="image/png")
            answer = await tg.wait_for("sendMessage", within=300, since=since, chat_id=USER_ID)
            seconds = time.monotonic() - started
            await tg.idle(quiet=2.0, within=60)
            peak = memory_kib(pid, "VmHWM")
        finally:
            bot.stop()
    text = str(answer.params.get("text") or answer.params.get("caption") or "")
    return {
        "picture_bytes": len(picture),
        "rss_before_mib": rss_before / 1024,
        "peak_mib": peak / 1024,
        "rise_mib": (peak - rss_before) / 1024,
        "answer_seconds": seconds,
        "answer": text,  # type: ignore[dict-item]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (bot log)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="facechain-decode-"))
    try:
        r = asyncio.run(measure(workdir))
    finally:
        if args.keep:
            print(f"work folder: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"picture: {WIDTH}x{HEIGHT} 16-bit grey PNG, {r['picture_bytes'] / 1000:.0f} kB")
    print(f"bot answered in {r['answer_seconds']:.1f} s: {r['answer']}")
    print(f"bot resident before: {r['rss_before_mib']:.0f} MiB, peak: {r['peak_mib']:.0f} MiB")
    print(f"bot_peak_rise_mib_40mp_16bit_png: {r['rise_mib']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
