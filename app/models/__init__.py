"""Loading models: the registry, the models-directory watcher, fill pairs; and the /v1/models surface."""
