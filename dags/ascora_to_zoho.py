"""Ascora → Zoho CRM: audit, mapping approval, schema, users, sample + diff, full load, reconcile."""

from airflow_ascora_provider.example_dags import delta_dag, migration_dag

# Zoho limits concurrent calls per org (5 on Free, 10 on the heavy APIs of every edition) and spends
# API credits, not requests: four load tasks at a time stay inside every edition's limit.
dag = migration_dag("zoho", label="Zoho CRM", destination_conn_id="zoho_default", max_concurrency=4)
delta = delta_dag("zoho", destination_conn_id="zoho_default")
