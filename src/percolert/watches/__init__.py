"""Watches: the store (specs to percolator queries, CRUD, domain errors), bulk loading
(`load`), reachability leases on the watches of owners who are here, and the percolator
(search events to batched percolate requests to matches). May import `core` and
`engine`."""
