"""Ascora → Freshsales: audit, mapping approval, schema, users, sample + diff, full load, reconcile."""

from airflow_ascora_provider.example_dags import delta_dag, migration_dag

# Freshsales counts requests per account per hour (1,000 to 5,000 by plan) and 400 a minute. Each load
# task paces itself at the minute limit, so one runs at a time; the hourly budget bounds the load anyway:
# a task stops before it runs out and resumes when it resets. Large account, contact and deal units go
# out as bulk upserts whose polling is deferred to the triggerer.
dag = migration_dag("freshsales", label="Freshsales", destination_conn_id="freshsales_default", max_concurrency=1)
delta = delta_dag("freshsales", destination_conn_id="freshsales_default")
