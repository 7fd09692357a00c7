"""Ascora → Microsoft Dynamics 365 Sales (Dataverse): audit, mapping approval, schema, users, sample + diff,
full load, reconcile; plus the delta-pickup DAG for the cutover window."""

from airflow_ascora_provider.example_dags import delta_dag, migration_dag

# Dataverse's service-protection limits are per user (the application user all tasks share): each load
# task paces itself at 90% of 6000 requests / 5 minutes, so one task at a time stays under the limit.
# To run N at once, set requests_per_window on the connection to about 5400 / N as well.
dag = migration_dag("dynamics365", label="Microsoft Dynamics 365 Sales", destination_conn_id="dataverse_default",
                    max_concurrency=1)
delta = delta_dag("dynamics365", destination_conn_id="dataverse_default")
