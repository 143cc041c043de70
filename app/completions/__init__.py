"""POST /v1/completions (OpenAI/vLLM protocol).

Each feature folder: protocol.py (schemas), serving.py (logic, no HTTP), router.py (thin HTTP)."""
