"""POST /v1/chat/completions.

Each feature folder: protocol.py (schemas), serving.py (logic, no HTTP), router.py (thin HTTP)."""
