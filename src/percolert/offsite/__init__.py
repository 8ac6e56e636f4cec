"""Off-site delivery: product alerts for accounts whose owner is away, sent through the
shop's webhook and by e-mail. A durable outbox in Elasticsearch (`outbox`), what goes there
and when (`routing`, `digests`), the channels (`webhook`, `mail`), where a webhook may point
(`targets`), accounts' contacts and preferences (`contacts`), the addresses never mailed
again (`suppressions`) and the unsubscribe links (`unsubscribe`).

Imports `core`, `engine` and the domain packages below it (watches, alerts, products);
`accounts` above it erases an account's off-site data through it; the web layer serves its
admin API and unsubscribe pages.
"""
