"""Elasticsearch itself: the client factory and its adaptation to the server's major
version (`es`), the indices behind their aliases and their lifecycle (`indices`), catalog
search (`search`), reads sent one by one or many in one request (`reads`). May import
`core` only."""
