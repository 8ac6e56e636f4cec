"""The process under uvicorn: the runner with a draining shutdown (`runner`), uvicorn's
WebSocket protocol with direct frame writes (`wsprotocol`) and HTTP protocol with bounds on
slow and oversized requests (`httpprotocol`), the garbage-collection policy (`gcpolicy`).
Every private uvicorn hook lives here. May import `web` and everything below it."""
