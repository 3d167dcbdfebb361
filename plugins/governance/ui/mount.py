"""Where the Privacy requests app is mounted, and the app itself built on first use.

Every Airflow process loads plugins (scheduler, dag-processor, each task's process); only the API
server serves this app. Importing this module costs nothing: FastAPI, the routes and the database
code are imported on the first request.
"""

from __future__ import annotations

from typing import Any

MOUNT = "/privacy-requests"


class LazyApp:
    """An ASGI app that builds :func:`governance.ui.app.create_app` on its first call."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from governance.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)
