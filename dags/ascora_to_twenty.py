"""Ascora → Twenty CRM: audit, mapping approval, schema, users, sample + diff, full load, reconcile."""

from airflow_ascora_provider.example_dags import delta_dag, migration_dag

dag = migration_dag("twenty", label="Twenty CRM")
delta = delta_dag("twenty")
