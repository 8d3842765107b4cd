# The Airflow image plus our pinned dependencies and package.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml /opt/imaging-lifecycle/
COPY --chown=airflow:0 include /opt/imaging-lifecycle/include
# Airflow's airflow_local_settings hook: the scheduler and Celery workers preload what tasks import.
COPY --chown=airflow:0 deploy/airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py
# The same lock as make install: Celery, Redis, asyncpg and the PostgreSQL driver are in it.
RUN pip install --no-cache-dir -r /opt/imaging-lifecycle/requirements.txt -c /opt/imaging-lifecycle/constraints.txt \
 && pip install --no-cache-dir --no-deps /opt/imaging-lifecycle
# Folders the named volumes mount over, owned by the image's user so the volumes start out as ours.
RUN mkdir -p /opt/imaging-lifecycle/s3/data /opt/imaging-lifecycle/s3/pki /opt/imaging-lifecycle/ca \
        /opt/imaging-lifecycle/state /opt/imaging-lifecycle/landing /opt/imaging-lifecycle/kms /opt/imaging-lifecycle/kmip \
 && chmod 0700 /opt/imaging-lifecycle/s3/data /opt/imaging-lifecycle/s3/pki /opt/imaging-lifecycle/state \
        /opt/imaging-lifecycle/kms /opt/imaging-lifecycle/kmip
