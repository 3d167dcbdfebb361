"""The Privacy requests page: a FastAPI app mounted in Airflow's API server by
``plugins/privacy_requests_plugin.py`` (same login as the Airflow UI; a nav entry opens it).

* :mod:`governance.ui.access`: who may do what (Airflow's auth manager plus configurable roles);
* :mod:`governance.ui.service`: recording requests, starting runs, approvals, reveals (no HTTP);
* :mod:`governance.ui.pages`: the HTML;
* :mod:`governance.ui.app`: the routes.
"""
