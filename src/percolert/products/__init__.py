"""Product alerts: catalog ingest and categories (`catalog`), what changed (`changes`:
new, cheaper, back in stock), changes percolated against the watches (`matching`), the
stored product alerts (`alerts`), their feed to this instance's sockets (`feed`), what each
user was shown (`seen`) and missed while away (`away`). May import `core`, `engine`,
`watches`, `broker` and `realtime`."""
