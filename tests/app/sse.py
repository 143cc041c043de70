"""Reading a Server-Sent Events body in the tests."""

from __future__ import annotations

import json
from typing import Any


def parse_sse(body: str) -> list[tuple[str, Any]]:
    """(event, parsed data) pairs; data that is not JSON (OpenAI's [DONE]) stays a string."""
    events: list[tuple[str, Any]] = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].removeprefix(" "))
        if data:
            text = "\n".join(data)
            events.append((event, text if text == "[DONE]" else json.loads(text)))
    return events
