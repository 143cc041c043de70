"""Request and response schemas (pydantic), one module per feature; no logic."""
