"""Fan-out between instances: coalescing windows, positions and publishing behind one
interface (`base`), with one file per backend: `memory` (embedded, one process) and `redis`
(shared by several instances; its scripts in `lua/`, its client in `connection`: one
server, a Redis Cluster or Sentinel's primary). A backend hands what it publishes to
the local hub. May import `core` and `realtime`."""
