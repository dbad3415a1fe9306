"""Model -> model rewrites (each returns a new model and a report; inputs are never changed)."""
