"""Search alerts: who may hear of a search and what they are told (`dispatch`), and the
alert log in Elasticsearch that missed alerts are recovered from (`log`, its reads sharing
the sendings they fetch: `sending_cache`). May import `core`, `engine`, `watches` and
`broker`."""
