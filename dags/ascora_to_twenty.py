"""Ascora → Twenty CRM: audit, mapping approval, schema, users, sample + diff, full load, reconcile."""

from airflow_ascora_provider.example_dags import delta_dag, migration_dag

# Twenty allows 100 requests a minute per API key: one load task at a time, each paced under it.
dag = migration_dag("twenty", label="Twenty CRM", max_concurrency=1)
delta = delta_dag("twenty")
