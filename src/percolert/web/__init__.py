"""The HTTP and WebSocket edge: the Starlette app and its lifespan (`app`), the routes,
the admin API, the alert socket, one error shape (`errors`), the OpenAPI document, structured
logs, and one file per middleware under `middleware/`. The only package that imports
Starlette. May import everything below it (`service` and the domain)."""
