"""HTTP-only pieces: the SSE writer, client disconnects, middleware, the error mapping, API keys."""
