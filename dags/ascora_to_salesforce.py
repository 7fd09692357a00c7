"""Ascora → Salesforce Sales Cloud: audit, mapping approval, schema, users, sample + diff, full load, reconcile."""

from airflow_ascora_provider.example_dags import delta_dag, migration_dag

# Salesforce caps an org's API calls per rolling 24 hours, not per second: the plugin stops a load
# before the reserve is reached and the task resumes later. Four load tasks at a time keep well under
# the 25 concurrent long-running requests an org allows; large units go out as Bulk API 2.0 jobs whose
# polling is deferred to the triggerer.
dag = migration_dag("salesforce", label="Salesforce Sales Cloud", destination_conn_id="salesforce_default",
                    max_concurrency=4)
delta = delta_dag("salesforce", destination_conn_id="salesforce_default")
