#!/bin/bash
# Two databases on one server: Airflow's metadata and our lifecycle catalog.
# The catalog has two roles: catalog_owner owns the database and runs migrations (airflow-init);
# catalog, the role every pipeline process connects as, owns nothing. airflow-init grants it
# read and write on the catalog's tables and only SELECT and INSERT on the audit trail, so it can
# neither truncate nor alter that table nor disable its append-only triggers.
set -euo pipefail
# Passwords go in as psql variables (:'name' quotes them), never pasted into the SQL text, and psql
# reads them from its environment (\getenv, psql 15+), so no password is on its command line.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<'SQL'
\getenv airflow_pw AIRFLOW_DB_PASSWORD
\getenv owner_pw CATALOG_OWNER_PASSWORD
\getenv catalog_pw CATALOG_DB_PASSWORD
CREATE USER airflow WITH PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE USER catalog_owner WITH PASSWORD :'owner_pw';
CREATE USER catalog WITH PASSWORD :'catalog_pw' NOCREATEDB NOCREATEROLE;
CREATE DATABASE catalog OWNER catalog_owner;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname catalog <<'SQL'
REVOKE ALL ON DATABASE catalog FROM PUBLIC;
GRANT CONNECT ON DATABASE catalog TO catalog;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO catalog_owner;
SQL
