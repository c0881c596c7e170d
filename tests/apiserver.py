"""The API app under a real uvicorn in a thread, for tests that talk HTTP to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from api.app import create_app
from cityneuron.settings import Settings


@contextmanager
def serve_api(settings: Settings) -> Iterator[httpx.Client]:
    """Serve ``create_app(settings)`` on a free port (lifespan included); yield a client for it."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "API server exited during startup"
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
