#!/bin/bash
# Two databases on one server: Airflow's metadata and our lifecycle catalog, each with its own owner.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<SQL
CREATE USER airflow WITH PASSWORD '${AIRFLOW_DB_PASSWORD}';
CREATE DATABASE airflow OWNER airflow;
CREATE USER catalog WITH PASSWORD '${CATALOG_DB_PASSWORD}';
CREATE DATABASE catalog OWNER catalog;
SQL
