"""The migration reports page: an Airflow 3 UI plugin (FastAPI app + external view).

``plugin.AscoraReportsPlugin`` mounts :func:`app.create_app` under :data:`links.URL_PREFIX` in the
Airflow API server and adds a "Ascora migrations" entry to the UI (Browse menu and each DAG run's
tabs). Every page and download requires an authenticated Airflow user allowed to read the DAG runs
concerned; see ``docs/ui.md``.
"""
