"""Interactive API documentation (/docs) served entirely from the package.

FastAPI's default /docs page loads Swagger UI from a CDN: without internet it is a blank page.
The pinned Swagger UI release in ``api/static/vendor/swagger-ui`` (see the README there) is served
under ``/static``; ReDoc, which would need another bundle, is turned off (``redoc_url=None``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
# Shared by every static asset the API serves (vendored libraries, screens): one mount, one folder.
STATIC_URL = "/static"
SWAGGER_UI_URL = f"{STATIC_URL}/vendor/swagger-ui"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# validatorUrl None: otherwise Swagger UI shows a badge fetched from validator.swagger.io.
_SWAGGER_PARAMETERS = {"validatorUrl": None}


def mount_static(app: FastAPI) -> None:
    """Serve ``api/static`` at ``/static`` (once, whoever calls first)."""
    if not any(isinstance(r, Mount) and r.path == STATIC_URL for r in app.router.routes):
        app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")


def install_docs(app: FastAPI) -> None:
    """/docs and its OAuth2 redirect page, with Swagger UI from ``/static``.

    Create the app with ``docs_url=None, redoc_url=None`` so FastAPI does not add its own.
    """
    mount_static(app)
    title = f"{app.title} - docs"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{SWAGGER_UI_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI_URL}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI_URL}/favicon-32x32.png",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_ui_parameters=_SWAGGER_PARAMETERS,
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT_URL, oauth2_redirect, methods=["GET"], include_in_schema=False)
