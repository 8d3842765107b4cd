"""Monitoring: hourly insider-threat detection and incidents; the monthly compliance report.

``detect_anomalies`` reads the access history from the audit trail, runs the policy's rules, checks
the trail and catalog for the other incident sources, raises each new incident once and sends it
through the notifiers (SMTP, webhook). ``compliance_report`` renders the previous month's report
(HTML and PDF) into the encrypted audit zone; ``imaging-lifecycle report make`` does any period.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, actor


@dag(
    dag_id="detect_anomalies",
    schedule=dt.timedelta(hours=1),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "audit", "incidents"],
    doc_md=__doc__,
)
def detect_anomalies():
    @task
    def detect_and_notify() -> dict:
        from imaging_lifecycle import incidents
        from imaging_lifecycle.airflow_glue import notify_incidents
        from imaging_lifecycle.services import Services

        context = get_current_context()
        svc, who = Services.open(), actor(context)
        out = incidents.detect(svc, now=context["data_interval_end"], actor=who)
        # Everything not yet delivered, not only this run's: an outage or a crash loses no notification.
        return {**out, "notified": notify_incidents(svc, svc.catalog.unnotified(), actor=who)}

    detect_and_notify()


@dag(
    dag_id="compliance_report",
    schedule="@monthly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "audit", "reports"],
    doc_md=__doc__,
)
def compliance_report():
    @task
    def make_report() -> dict:
        from imaging_lifecycle import compliance
        from imaging_lifecycle.services import Services

        context = get_current_context()
        svc = Services.open()
        # The hospital's calendar month before the run (Airflow 3's cron runs have no interval of their own).
        start, end = compliance.month_before(context["data_interval_end"], compliance.hospital_tz(svc))
        return compliance.make(svc, period_start=start, period_end=end, actor=actor(context))

    make_report()


detect_anomalies()
compliance_report()
