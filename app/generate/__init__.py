"""POST /generate and /next-token (sampling and beam search).

Each feature folder: protocol.py (schemas), serving.py (logic, no HTTP), router.py (thin HTTP)."""
