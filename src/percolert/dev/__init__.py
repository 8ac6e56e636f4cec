"""Development tooling, never imported by runtime code: the dev Elasticsearch node
(`devnode`), the dev Redis (`redisnode`), their common base (`localservice`), what the demo
adds (`demo`), stand-ins for what off-site delivery reaches (`sinks`) and several local
instances for it (`instances`). May import `core` only; only `percolert.cli.dev` imports it."""
