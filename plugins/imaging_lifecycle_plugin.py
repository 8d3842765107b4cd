"""The imaging-lifecycle Airflow plugin: the Lifecycle app under ``/lifecycle`` (Airflow's login protects it).

``GET /lifecycle/`` is the operator's Lifecycle view (also in the UI's navigation);
``/lifecycle/api/summary`` its numbers as JSON; ``/lifecycle/api/reports/{id}/pdf``
a compliance report. ``GET /lifecycle/api/grants/{grant_id}/download`` hands an approved working
copy to its requester. The app is built in
:func:`imaging_lifecycle.airflow_glue.lifecycle_app`; logic stays in the package.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from imaging_lifecycle.airflow_glue import lifecycle_app


class ImagingLifecyclePlugin(AirflowPlugin):
    name = "imaging_lifecycle"
    fastapi_apps = [{"app": lifecycle_app(), "url_prefix": "/lifecycle", "name": "Lifecycle"}]
    # The operator's page in the UI's navigation, shown inside Airflow (same login, the _token cookie).
    external_views = [{"name": "Lifecycle", "href": "/lifecycle/", "url_route": "lifecycle", "destination": "nav",
                       "category": "browse"}]
