"""The logic of each feature: schemas in, schemas out, no HTTP (routers call these)."""
