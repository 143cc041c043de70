"""The online half: the FastAPI service, batching engine and session store."""
