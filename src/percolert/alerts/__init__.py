"""Search alerts: who may hear of a search and what they are told (`dispatch`), and the
alert log in Elasticsearch that missed alerts are recovered from (`log`). May import `core`,
`engine`, `watches` and `broker`."""
