"""Undo a migration run (trigger by hand with the run id and confirm=true)."""

from airflow_ascora_provider.example_dags import rollback_dag

dag = rollback_dag()
