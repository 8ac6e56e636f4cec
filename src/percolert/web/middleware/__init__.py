"""One ASGI middleware per file: signed sessions, rate limits and the socket cap
(`admission`, with `ratelimits`), the request body bound (`bodylimit`), cross-site writes
refused (`browser_guard`), security headers. Part of `web`."""
