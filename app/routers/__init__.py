"""HTTP routers: thin, one per feature; the logic lives in the engine and the store."""
