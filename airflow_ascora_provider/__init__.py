"""Apache Airflow provider for migrating Ascora (field service management) data into a CRM."""

from airflow_ascora_provider.version import __version__

__all__ = ["__version__"]
