"""The running service of one app: every domain part constructed, wired and owned by one
object (`services`), and the document upgrades `percolert setup` hands the index lifecycle
(`migrations`). May import every domain package; knows nothing of HTTP."""
