"""Shop accounts: who a shop's token says its customer is (`tokens`, keys from a shared
secret or the shop's JWKS: `jwks`), the user id an account has here (`ids`), and what the
account may ask of its data: move an anonymous session's watches in, export, erasure.

Imports `core`, `engine` and the domain packages below it (watches, alerts, products,
broker); never the web layer: the HTTP and socket edges call in here.
"""
