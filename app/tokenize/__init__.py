"""POST /tokenize and /detokenize.

Each feature folder: protocol.py (schemas), serving.py (logic, no HTTP), router.py (thin HTTP)."""
