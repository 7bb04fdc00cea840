"""diffar.operator: the run API, manifest builders, kopf handlers and the local runner."""
