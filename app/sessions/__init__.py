"""Sessions: the Redis store, the state codec, session text, export/import files, and the /v1/sessions surface."""
