"""diffar.operator: the run API, manifest builders and kopf handlers; `local` runs them on one machine."""
