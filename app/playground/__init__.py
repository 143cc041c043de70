"""GET /: the playground page.

Each feature folder: protocol.py (schemas), serving.py (logic, no HTTP), router.py (thin HTTP)."""
