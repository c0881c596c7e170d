"""The README's screenshots of the operations screen, from a real run: both languages, the small
and the district presets, into docs/img/.

    .venv/bin/python scripts/screenshots.py [--preset small] [--preset district]

small: `cityneuron up --speed 60` (the simulator catches up the last 24 h, so every view has data
and the feed moves). district: `cityneuron up --no-sim --preset district` filled with
`cityneuron sim --direct` (100 k devices COPY'd in: a live 100 k city is more than a shared
machine should carry for a picture).
"""

from __future__ import annotations

import argparse
import base64
import struct
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from browser import Browser, chromium  # noqa: E402
from stackproc import Stack, running_stack  # noqa: E402

OUT = ROOT / "docs" / "img"
WIDTH, HEIGHT = 1440, 860
EXPECTED = {"small": 3050, "district": 102_110}


def _wait(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise RuntimeError("timed out")


_PIXELS = """const done = arguments[arguments.length - 1];
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < data.length; i += 0x8000) s += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  done([c.width, c.height, btoa(s)]);
};
img.src = 'data:image/png;base64,' + arguments[0];"""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def palette_png(rgba: np.ndarray) -> bytes:
    """An 8-bit palette PNG of an RGBA image: the 256 most frequent colours at 5 bits a channel,
    every pixel mapped to the nearest (a flat dark UI loses nothing visible; the file shrinks 3x).
    No Pillow: numpy and zlib."""
    height, width = rgba.shape[:2]
    q = (rgba[..., :3] >> 3).astype(np.int32)
    code = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    counts = np.bincount(code.ravel(), minlength=1 << 15)
    top = np.argsort(-counts)[:256]
    top = top[counts[top] > 0]
    palette = np.stack([(top >> 10) & 31, (top >> 5) & 31, top & 31], axis=1) * 8 + 4
    every = np.arange(1 << 15)
    colours = np.stack([(every >> 10) & 31, (every >> 5) & 31, every & 31], axis=1) * 8 + 4
    nearest = np.empty(1 << 15, dtype=np.uint8)
    for start in range(0, 1 << 15, 4096):
        d = ((colours[start : start + 4096, None, :] - palette[None, :, :]) ** 2).sum(axis=2)
        nearest[start : start + 4096] = d.argmin(axis=1)
    indexed = nearest[code]
    raw = b"".join(b"\x00" + indexed[row].tobytes() for row in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def _shoot(page: Browser, path: Path) -> None:
    shot = page.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    width, height, pixels = page.driver.execute_async_script(_PIXELS, shot["data"])
    rgba = np.frombuffer(base64.b64decode(pixels), dtype=np.uint8).reshape(height, width, 4)
    path.write_bytes(palette_png(rgba))
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} kB")


def _open(page: Browser, stack: Stack, lang: str) -> None:
    page.driver.get(f"{stack.api}/screen/?lang={lang}")
    _wait(
        lambda: page.js(
            "return !!(window.cityScreen && (window.cityScreen.ready || window.cityScreen.errors.length))"
        ),
        120,
    )
    errors = page.js("return window.cityScreen.errors")
    if errors:
        raise RuntimeError(f"the screen failed: {errors}")


def small() -> None:
    with running_stack("--speed", "60") as stack, httpx.Client(base_url=stack.api, timeout=30) as api:
        _wait(lambda: api.get("/city/overview").json()["devices"]["total"] >= EXPECTED["small"], 120)
        time.sleep(20)  # alerts open, the feed fills
        with chromium(WIDTH, HEIGHT) as page:
            _open(page, stack, "zh")
            time.sleep(4)
            _shoot(page, OUT / "screen-small-zh.png")
            _open(page, stack, "en")
            page.js(
                "const i = document.getElementById('search-input'); i.value = 'pole-futian-00003';"
                " document.getElementById('search').requestSubmit();"
            )
            _wait(
                lambda: page.js(
                    "return Number(document.getElementById('dp-chart')?.dataset.points || 0) > 0"
                ),
                30,
            )
            time.sleep(3)
            _shoot(page, OUT / "screen-small-en.png")


def district() -> None:
    with running_stack("--no-sim", "--preset", "district") as stack:
        start = (datetime.now(tz=UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        subprocess.run(
            [sys.executable, "-m", "cityneuron", "sim", "--preset", "district", "--direct",
             "--database-url", stack.database_url, "--backfill-from", start],
            check=True, capture_output=True,
        )  # fmt: skip
        with chromium(WIDTH, HEIGHT) as page:
            for lang in ("zh", "en"):
                _open(page, stack, lang)
                time.sleep(3)
                _shoot(page, OUT / f"screen-district-{lang}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", choices=["small", "district"])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for preset in args.preset or ["small", "district"]:
        {"small": small, "district": district}[preset]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
