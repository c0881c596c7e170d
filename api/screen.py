"""The operations screen (一图全面感知): static files served by the API itself, no build step.

``/screen/`` is the page (api/static/screen), ``/screen/vendor/`` the pinned third-party browser
libraries with their licences (api/static/vendor, listed in docs/screen.md), and ``/`` sends a
browser to the screen. Nothing here needs the internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
SCREEN_PATH = "/screen/"


def install_screen(app: FastAPI) -> None:
    """Mount the screen and its libraries on ``app`` (the vendor mount first: it is the longer prefix)."""
    app.mount("/screen/vendor", StaticFiles(directory=STATIC_DIR / "vendor"), name="screen-vendor")
    app.mount("/screen", StaticFiles(directory=STATIC_DIR / "screen", html=True), name="screen")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(SCREEN_PATH)
