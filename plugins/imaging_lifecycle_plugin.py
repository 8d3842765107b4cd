"""The imaging-lifecycle Airflow plugin.

Registered so the platform's Airflow knows about us; the operator-facing UI
view (gate failures, approvals, deletions) is added here by a later issue.
Logic stays in the ``imaging_lifecycle`` package.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class ImagingLifecyclePlugin(AirflowPlugin):
    name = "imaging_lifecycle"
