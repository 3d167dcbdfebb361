"""Airflow plugin: the Privacy requests page (``governance.ui``).

* ``fastapi_apps``: the page's FastAPI app, mounted by the API server at ``/privacy-requests``
  (no Flask, no second server; Airflow's own login protects it);
* ``external_views``: "Privacy requests" in the UI's navigation, opening that app inside the UI.

Lives at the top of plugins/ because the plugins manager does not look inside ``governance/``.
The app is built on first request (:class:`governance.ui.mount.LazyApp`): schedulers and workers
load plugins too and never serve it.
"""

from __future__ import annotations

from airflow.sdk.plugins_manager import AirflowPlugin

from governance.ui.mount import MOUNT, LazyApp


class PrivacyRequestsPlugin(AirflowPlugin):
    name = "privacy_requests"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": MOUNT, "name": "Privacy requests"}]
    external_views = [
        {
            "name": "Privacy requests",
            # Relative: the UI resolves it against its own base URL (works behind a path prefix).
            "href": MOUNT.lstrip("/") + "/",
            "url_route": "privacy-requests",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
