#!/bin/bash
# Two databases on one server: Airflow's metadata and our lifecycle catalog.
# The catalog has two roles: catalog_owner owns the database and runs migrations (airflow-init);
# catalog, the role every pipeline process connects as, owns nothing. airflow-init grants it
# read and write on the catalog's tables and only SELECT and INSERT on the audit trail, so it can
# neither truncate nor alter that table nor disable its append-only triggers.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<SQL
CREATE USER airflow WITH PASSWORD '${AIRFLOW_DB_PASSWORD}';
CREATE DATABASE airflow OWNER airflow;
CREATE USER catalog_owner WITH PASSWORD '${CATALOG_OWNER_PASSWORD}';
CREATE USER catalog WITH PASSWORD '${CATALOG_DB_PASSWORD}' NOCREATEDB NOCREATEROLE;
CREATE DATABASE catalog OWNER catalog_owner;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname catalog <<SQL
REVOKE ALL ON DATABASE catalog FROM PUBLIC;
GRANT CONNECT ON DATABASE catalog TO catalog;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO catalog_owner;
SQL
