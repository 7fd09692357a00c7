"""Microsoft Dynamics 365 Sales (Dataverse) destination."""
