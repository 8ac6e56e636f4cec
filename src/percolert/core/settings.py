"""Configuration: read once from the environment into one frozen struct, then passed around."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import limits
import msgspec

from percolert.core.offsite_settings import OffsiteSettings, offsite_from_environment
from percolert.core.redis_address import parse_redis_url
from percolert.core.times import duration_seconds

DEFAULT_ELASTICSEARCH_URL = "http://127.0.0.1:9200"


class SettingsError(ValueError):
    """An environment variable holds a value Percolert cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Where Elasticsearch is and how to authenticate to it.
    elasticsearch_url: str = DEFAULT_ELASTICSEARCH_URL
    elasticsearch_api_key: str | None = None
    elasticsearch_username: str | None = None
    elasticsearch_password: str | None = None
    elasticsearch_ca_certs: str | None = None
    elasticsearch_verify_certs: bool = True
    # Seconds one Elasticsearch request may take before the caller gets a 503.
    elasticsearch_timeout: float = 5.0
    # Connections the client keeps to each node. Requests beyond them wait for one, and that
    # wait counts against `elasticsearch_timeout`: the client's default of 10 timed out
    # greetings during a reconnect storm of 5,000 sockets (docs/benchmarks/README.md).
    elasticsearch_connections: int = 32
    # Index and alias names start with this, so several deployments (or test runs) can share
    # a cluster without touching each other's data.
    index_prefix: str = "percolert"
    # Dev node pid/port/log files and other local state; git-ignored.
    state_dir: Path = Path(".percolert")
    # The dev node's launcher project (default: tools/esnode of the source checkout) and the
    # JDK it runs on (default: `java` on the PATH).
    esnode_dir: Path | None = None
    java_home: Path | None = None
    # The dev Redis's binary (default: `redis-server` on the PATH).
    redis_server: Path | None = None
    # The Redis that instances sharing these indices coordinate through (routing, presence,
    # coalescing, positions): one server, a Cluster or Sentinel's primary (redis_address.py).
    # Unset: one process, everything in memory.
    redis_url: str | None = None
    # Where search alerts go: "hub", the sockets this process holds; "centrifugo", the
    # personal channels of a Centrifugo server (realtime/centrifugo.py; one instance only,
    # docs/design/centrifugo-peer.md), at its HTTP address with its server API key.
    delivery: str = "hub"
    centrifugo_api_url: str | None = None
    centrifugo_api_key: str | None = None
    # Signs the connection tokens POST /api/realtime/token gives shoppers (Centrifugo's
    # client.token.hmac_secret_key), and how long each lasts.
    centrifugo_token_secret: str | None = None
    centrifugo_token_seconds: float = 3600.0
    # This instance's name in Redis, logs and metrics. Unset: host:port and a random part,
    # new on every start (a restarted process never takes over a dead one's inbox).
    instance_id: str | None = None
    # Searches whose alerts wait while the shared broker's Redis is unreachable (sent when
    # it is back); beyond this many the oldest are dropped, counted and logged.
    broker_spool: int = 100_000
    # How often the alert log writes what was sent to Elasticsearch (in one bulk request).
    alert_log_flush_seconds: float = 0.1
    # Where `percolert serve` listens.
    host: str = "127.0.0.1"
    port: int = 8000
    # Log lines as one JSON object each ("json") or for reading by eye ("text").
    log_format: str = "json"
    # Signs session cookies. Unset: a random one is generated once per state directory.
    secret: str | None = None
    # Origins, besides the server's own, whose pages may use the API (CORS) and open the
    # WebSocket: the shop's storefronts.
    allowed_origins: tuple[str, ...] = ()
    # Who may frame the page (CSP frame-ancestors): 'none' unless the shop embeds it.
    frame_ancestors: tuple[str, ...] = ()
    # Shop accounts: the shop vouches for its customer with a JWT, signed with this shared
    # secret (HS256) or with a key of the shop's JWKS (RS256/ES256, chosen by `kid`).
    # Neither set: anonymous sessions only.
    jwt_secret: str | None = None
    jwks_url: str | None = None
    # The JWKS may be served over plain http (development only).
    jwks_allow_http: bool = False
    # How often the JWKS is read again; a token naming an unknown `kid` reads it at once, up
    # to `jwks_reads_per_minute` times a minute. An outage keeps the keys read last.
    jwks_refresh_seconds: float = 300.0
    jwks_reads_per_minute: int = 10
    # Checked when set: the token's `aud` must include it, its `iss` must equal it.
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # Clock skew allowed on `exp`, `nbf` and `iat`.
    jwt_leeway_seconds: float = 30.0
    # A socket authenticating with a token sends it within this long of the handshake.
    socket_auth_timeout_seconds: float = 5.0
    # A socket's token is asked for again this long before it expires (or halfway through
    # its remaining life, if sooner).
    token_refresh_ahead_seconds: float = 60.0
    # Mark the session cookie Secure (set when served over https, e.g. behind a proxy).
    secure_cookies: bool = False
    max_watches_per_user: int = 50
    # Repeated matches of one watch for one recipient within this many seconds are folded
    # into one follow-up alert.
    coalesce_seconds: float = 2.0
    # A watch matching more than this share of the searches in a period (of at least the
    # minimum) is too broad: its search alerts pause until the next period ends (alerts/
    # breadth.py). A share of 1 turns the bound off.
    broad_watch_share: float = 0.2
    broad_watch_min_searches: int = 200
    broad_watch_period_seconds: float = 600.0
    # Search events percolated in one request at most; batches form only under load.
    percolate_batch_size: int = 64
    # Concurrent percolate requests, so one slow request does not hold up the next batch.
    percolate_concurrency: int = 2
    # Seconds one batch's percolation may take; past it the batch is given up (its alerts
    # lost, counted) so that later batches, handed on in search order, are not held up.
    # Unset: three Elasticsearch timeouts (a request, its retry, and room to spare); read it
    # through `percolate_seconds`.
    percolate_timeout: float | None = None
    # Alerts waiting for one socket; a socket that falls this far behind is closed (1013).
    socket_queue_size: int = 256
    # A socket being closed gets this long to take what was sent before the close frame and
    # to answer it; a client that stopped reading is then cut off without it.
    socket_close_seconds: float = 10.0
    # Slow clients (slowloris), bounded as a reverse proxy in front would bound them: a
    # request's line and headers must all arrive within `head_timeout_seconds` of their first
    # byte, and a new connection must send a whole head within as long of being accepted
    # (HAProxy's `timeout http-request`, 10 s in its documented configurations: a browser
    # sends a head in one packet, so seconds are a client that is stalling); a body may pause
    # at most `body_timeout_seconds` between two reads (nginx's `client_body_timeout`, whose
    # default is 60 s: a phone on a bad link may pause long, and a pause costs one idle
    # connection, not a worker). Past either: 408, and the connection closes.
    head_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    # A watch owner who left less than this many seconds ago still gets alerts (kept for
    # the reconnect); one away longer gets none until they are back.
    reconnect_grace_seconds: float = 600.0
    # Search percolation verifies only watches whose owner is leased as reachable: a lease
    # runs for the grace period plus this slack, renewed about once per slack while the
    # owner holds a socket here (see reachability.py). Longer: fewer renewals, more watches
    # of owners already gone still percolated (never fewer than reachable ones).
    lease_slack_seconds: float = 600.0
    # Off: searches are not percolated and nobody is alerted (search keeps working) — a
    # switch to shed load in an incident, and the benchmark's "alerts off" reference.
    alerts_enabled: bool = True
    # Rate limits (README "Limits"), each in `limits`' notation ("10/second;300/minute"),
    # None for no limit. Counted per session (the user id of the cookie) and per client
    # address; `rate_limits_enabled` off turns them all off (the benchmark drives hundreds
    # of searches a second from one address).
    rate_limits_enabled: bool = True
    # Where the counters live: `limits`' async storage URI. Unset: the shared Redis of
    # `redis_url` when there is one (so each limit holds across instances), else memory.
    rate_limit_storage: str | None = None
    limit_searches_per_session: str | None = "10/second;300/minute"
    limit_searches_per_address: str | None = "20/second;1200/minute"
    # Listing watches and categories: each asks Elasticsearch.
    limit_reads_per_session: str | None = "10/second;300/minute"
    limit_reads_per_address: str | None = "20/second;1200/minute"
    limit_watch_changes_per_session: str | None = "30/minute;200/hour"
    limit_watch_changes_per_address: str | None = "60/minute;600/hour"
    limit_sockets_per_session: str | None = "30/minute"
    limit_sockets_per_address: str | None = "120/minute"
    # The admin API (no session: per address only; wrong tokens count too).
    limit_admin_requests_per_address: str | None = "10/second;600/minute"
    # /metrics and /readyz asked without the right token, per address (the token's holders
    # are never limited).
    limit_monitoring_refusals_per_address: str | None = "10/second;60/minute"
    # New sessions per address: a token bucket of `new_sessions_burst` tokens, one more
    # every `new_sessions_refill_seconds` (README "Limits"); a burst of 0 turns it off.
    new_sessions_burst: int = 20
    new_sessions_refill_seconds: float = 10.0
    # Bearer token of /metrics and /readyz. Unset: they answer only clients on this machine
    # (a loopback peer, its request not forwarded by a proxy).
    metrics_token: str | None = None
    # Sockets one user may have open at once (every tab holds one).
    max_sockets_per_user: int = 20
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or networks,
    # "*" for any). Empty: the peer of the connection is the client, whatever it claims.
    trusted_proxies: tuple[str, ...] = ()
    # --- product alerts (catalog changes percolated against the same watches) ---
    # Bearer token of the admin API (/api/admin/...). Unset: those routes do not exist.
    admin_token: str | None = None
    # A price drop alerts a watch without a max price only when at least this big (percent).
    price_drop_min_percent: float = 5.0
    # One product alerts one watch at most once in this many seconds (price drops, back in
    # stock), unless a drop crosses the watch's max price.
    product_alert_min_interval_seconds: float = 86_400.0
    # Product alerts are kept this long for owners who are away.
    product_alert_retention_days: float = 30.0
    # How often each server looks for new product alerts to deliver to its open sockets
    # (alerts written by another process: `percolert ingest`, another instance).
    product_alert_poll_seconds: float = 1.0
    # The search log behind the admin's demand view (percolert.insights): kept this many
    # days, one index a day, older days deleted whole; 0 keeps no log at all.
    search_log_days: float = 30.0
    # The demand view's tables are read again at most this often (each window its own).
    insights_cache_seconds: float = 10.0
    # The shop's webhook and e-mail for accounts that are away (core/offsite_settings.py).
    offsite: OffsiteSettings = msgspec.field(default_factory=OffsiteSettings)

    @property
    def accounts(self) -> bool:
        """Whether shops' tokens are accepted (a key to check them is configured)."""
        return self.jwt_secret is not None or self.jwks_url is not None

    @property
    def percolate_seconds(self) -> float:
        """`percolate_timeout`, or three Elasticsearch timeouts when it is not set."""
        if self.percolate_timeout is not None:
            return self.percolate_timeout
        return 3 * self.elasticsearch_timeout


def _optional(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _number(environ: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = _optional(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _optional_number(environ: Mapping[str, str], name: str, *, minimum: float) -> float | None:
    if _optional(environ, name) is None:
        return None
    return _number(environ, name, 0.0, minimum=minimum)


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _optional(environ, name)
    if raw is None:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _origins(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = []
    for raw in (_optional(environ, name) or "").split(","):
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise SettingsError(f"{name} takes origins like https://shop.example.com, got {raw!r}")
        origins.append(origin)
    return tuple(origins)


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    raw = _optional(environ, name)
    return None if raw is None else Path(raw)


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (_optional(environ, name) or default).lower()
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _duration(environ: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, given as a number of seconds or with a unit: 90s, 30m, 24h, 1d."""
    raw = _optional(environ, name)
    if raw is None:
        return default
    seconds = duration_seconds(raw)
    if seconds is None:
        raise SettingsError(f"{name} takes a duration like 86400, 30m, 24h or 1d; got {raw!r}")
    return seconds


_MIN_ADMIN_TOKEN = 16


def _admin_token(environ: Mapping[str, str], name: str) -> str | None:
    token = _optional(environ, name)
    if token is not None and len(token) < _MIN_ADMIN_TOKEN:
        raise SettingsError(
            f"{name} must be at least {_MIN_ADMIN_TOKEN} characters (a random secret, "
            "e.g. `openssl rand -hex 32`)"
        )
    return token


def _rate_limit(environ: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = _optional(environ, name)
    if raw is None:
        return default
    if raw.lower() == "off":
        return None
    try:
        limits.parse_many(raw)
    except ValueError:
        raise SettingsError(
            f"{name} takes limits like 10/second;300/minute, or off; got {raw!r}"
        ) from None
    return raw


def _proxies(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    proxies = []
    for raw in (_optional(environ, name) or "").split(","):
        proxy = raw.strip()
        if not proxy:
            continue
        if proxy != "*":
            try:
                ipaddress.ip_network(proxy)
            except ValueError:
                raise SettingsError(
                    f"{name} takes addresses or networks like 10.0.0.0/8, or *; got {raw!r}"
                ) from None
        proxies.append(proxy)
    return tuple(proxies)


# HS256 keys shorter than SHA-256's output weaken the MAC (RFC 7518 §3.2).
_MIN_JWT_SECRET = 32


def _token_keys(environ: Mapping[str, str]) -> tuple[str | None, str | None, bool]:
    """PERCOLERT_JWT_SECRET, PERCOLERT_JWKS_URL (one or neither) and whether the JWKS may
    come over plain http."""
    secret = _optional(environ, "PERCOLERT_JWT_SECRET")
    url = _optional(environ, "PERCOLERT_JWKS_URL")
    allow_http = _flag(environ, "PERCOLERT_JWKS_ALLOW_HTTP", False)
    if secret is not None and url is not None:
        raise SettingsError(
            "set PERCOLERT_JWT_SECRET (HS256) or PERCOLERT_JWKS_URL (RS256/ES256), not both: "
            "a deployment that accepts both lets a public key be used as a shared secret"
        )
    if secret is not None and len(secret.encode()) < _MIN_JWT_SECRET:
        raise SettingsError(
            f"PERCOLERT_JWT_SECRET must be at least {_MIN_JWT_SECRET} bytes (a random secret, "
            "e.g. `openssl rand -hex 32`)"
        )
    if url is not None:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("https", "http") or (scheme == "http" and not allow_http):
            raise SettingsError(
                f"PERCOLERT_JWKS_URL must be an https:// URL, got {url!r} (plain http only "
                "with PERCOLERT_JWKS_ALLOW_HTTP=true, for development)"
            )
    return secret, url, allow_http


def from_environment(
    environ: Mapping[str, str] | None = None,
    *,
    default_elasticsearch_url: str = DEFAULT_ELASTICSEARCH_URL,
) -> Settings:
    """Build settings from environment variables (see the README's configuration table).

    Without ELASTICSEARCH_URL, the cluster is `default_elasticsearch_url` (the CLI passes the
    dev node's when one is running).
    """
    env = os.environ if environ is None else environ
    # Every default is the struct's own, written once there.
    default = Settings()
    state_dir = _path(env, "PERCOLERT_STATE_DIR") or default.state_dir
    url = _optional(env, "ELASTICSEARCH_URL") or default_elasticsearch_url
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"ELASTICSEARCH_URL must start with http:// or https://, got {url!r}")
    prefix = _optional(env, "PERCOLERT_INDEX_PREFIX") or default.index_prefix
    if not prefix.replace("-", "").replace("_", "").isalnum() or prefix != prefix.lower():
        raise SettingsError(
            f"PERCOLERT_INDEX_PREFIX must be lowercase letters, digits, '-' or '_', got {prefix!r}"
        )
    username = _optional(env, "ELASTICSEARCH_USERNAME")
    password = _optional(env, "ELASTICSEARCH_PASSWORD")
    if (username is None) != (password is None):
        raise SettingsError(
            "set both ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD, or neither"
        )
    timeout = _number(env, "ELASTICSEARCH_TIMEOUT", default.elasticsearch_timeout, minimum=0.1)
    if _optional(env, "PERCOLERT_LIMIT_NEW_SESSIONS_PER_ADDRESS") is not None:
        raise SettingsError(
            "PERCOLERT_LIMIT_NEW_SESSIONS_PER_ADDRESS is gone: new sessions are a token bucket, "
            "PERCOLERT_NEW_SESSIONS_BURST and PERCOLERT_NEW_SESSIONS_REFILL_SECONDS"
        )
    storage = _optional(env, "PERCOLERT_RATE_LIMIT_STORAGE")
    if storage is not None and not storage.startswith("async+"):
        raise SettingsError(
            "PERCOLERT_RATE_LIMIT_STORAGE must be an async storage URI of the `limits` library "
            f"(async+memory://, async+redis://HOST:PORT), got {storage!r}"
        )
    redis_url = _optional(env, "PERCOLERT_REDIS_URL")
    if redis_url is not None:
        try:
            parse_redis_url(redis_url)
        except ValueError as error:
            raise SettingsError(f"PERCOLERT_REDIS_URL {error}") from None
    delivery = _choice(env, "PERCOLERT_DELIVERY", ("hub", "centrifugo"), default.delivery)
    centrifugo_api_url = _optional(env, "PERCOLERT_CENTRIFUGO_API_URL")
    centrifugo_api_key = _optional(env, "PERCOLERT_CENTRIFUGO_API_KEY")
    if delivery == "centrifugo":
        if centrifugo_api_url is None or centrifugo_api_key is None:
            raise SettingsError(
                "PERCOLERT_DELIVERY=centrifugo needs PERCOLERT_CENTRIFUGO_API_URL (its HTTP "
                "address) and PERCOLERT_CENTRIFUGO_API_KEY (its http_api.key)"
            )
        if not centrifugo_api_url.startswith(("http://", "https://")):
            raise SettingsError(
                "PERCOLERT_CENTRIFUGO_API_URL must start with http:// or https://, "
                f"got {centrifugo_api_url!r}"
            )
        if redis_url is not None:
            raise SettingsError(
                "PERCOLERT_DELIVERY=centrifugo runs one instance: unset PERCOLERT_REDIS_URL"
            )
    centrifugo_token_secret = _optional(env, "PERCOLERT_CENTRIFUGO_TOKEN_SECRET")
    if centrifugo_token_secret is not None and len(centrifugo_token_secret) < 32:
        raise SettingsError(
            "PERCOLERT_CENTRIFUGO_TOKEN_SECRET must be at least 32 characters "
            "(Centrifugo's client.token.hmac_secret_key)"
        )
    jwt_secret, jwks_url, jwks_allow_http = _token_keys(env)
    settings = Settings(
        elasticsearch_url=url.rstrip("/"),
        elasticsearch_api_key=_optional(env, "ELASTICSEARCH_API_KEY"),
        elasticsearch_username=username,
        elasticsearch_password=password,
        elasticsearch_ca_certs=_optional(env, "ELASTICSEARCH_CA_CERTS"),
        elasticsearch_verify_certs=_flag(
            env, "ELASTICSEARCH_VERIFY_CERTS", default.elasticsearch_verify_certs
        ),
        elasticsearch_timeout=timeout,
        elasticsearch_connections=int(
            _number(env, "ELASTICSEARCH_CONNECTIONS", default.elasticsearch_connections, minimum=1)
        ),
        index_prefix=prefix,
        state_dir=state_dir,
        esnode_dir=_path(env, "PERCOLERT_ESNODE_DIR"),
        java_home=_path(env, "JAVA_HOME"),
        redis_server=_path(env, "PERCOLERT_REDIS_SERVER"),
        redis_url=redis_url,
        delivery=delivery,
        centrifugo_api_url=centrifugo_api_url,
        centrifugo_api_key=centrifugo_api_key,
        centrifugo_token_secret=centrifugo_token_secret,
        centrifugo_token_seconds=_number(
            env,
            "PERCOLERT_CENTRIFUGO_TOKEN_SECONDS",
            default.centrifugo_token_seconds,
            minimum=60,
        ),
        instance_id=_optional(env, "PERCOLERT_INSTANCE_ID"),
        broker_spool=int(_number(env, "PERCOLERT_BROKER_SPOOL", default.broker_spool, minimum=1)),
        alert_log_flush_seconds=_number(
            env, "PERCOLERT_ALERT_LOG_FLUSH_SECONDS", default.alert_log_flush_seconds, minimum=0.01
        ),
        host=_optional(env, "PERCOLERT_HOST") or default.host,
        port=int(_number(env, "PERCOLERT_PORT", default.port, minimum=0)),
        log_format=_choice(env, "PERCOLERT_LOG_FORMAT", ("json", "text"), default.log_format),
        secret=_optional(env, "PERCOLERT_SECRET"),
        allowed_origins=_origins(env, "PERCOLERT_ALLOWED_ORIGINS"),
        frame_ancestors=_origins(env, "PERCOLERT_FRAME_ANCESTORS"),
        secure_cookies=_flag(env, "PERCOLERT_SECURE_COOKIES", default.secure_cookies),
        jwt_secret=jwt_secret,
        jwks_url=jwks_url,
        jwks_allow_http=jwks_allow_http,
        jwks_refresh_seconds=_number(
            env, "PERCOLERT_JWKS_REFRESH_SECONDS", default.jwks_refresh_seconds, minimum=1
        ),
        jwks_reads_per_minute=int(
            _number(
                env, "PERCOLERT_JWKS_READS_PER_MINUTE", default.jwks_reads_per_minute, minimum=1
            )
        ),
        jwt_audience=_optional(env, "PERCOLERT_JWT_AUDIENCE"),
        jwt_issuer=_optional(env, "PERCOLERT_JWT_ISSUER"),
        jwt_leeway_seconds=_number(
            env, "PERCOLERT_JWT_LEEWAY_SECONDS", default.jwt_leeway_seconds, minimum=0
        ),
        socket_auth_timeout_seconds=_number(
            env,
            "PERCOLERT_SOCKET_AUTH_TIMEOUT_SECONDS",
            default.socket_auth_timeout_seconds,
            minimum=0.1,
        ),
        token_refresh_ahead_seconds=_number(
            env,
            "PERCOLERT_TOKEN_REFRESH_AHEAD_SECONDS",
            default.token_refresh_ahead_seconds,
            minimum=0,
        ),
        max_watches_per_user=int(
            _number(env, "PERCOLERT_MAX_WATCHES_PER_USER", default.max_watches_per_user, minimum=1)
        ),
        coalesce_seconds=_number(
            env, "PERCOLERT_COALESCE_SECONDS", default.coalesce_seconds, minimum=0
        ),
        broad_watch_share=_number(
            env, "PERCOLERT_BROAD_WATCH_SHARE", default.broad_watch_share, minimum=0.01
        ),
        broad_watch_min_searches=int(
            _number(
                env,
                "PERCOLERT_BROAD_WATCH_MIN_SEARCHES",
                default.broad_watch_min_searches,
                minimum=1,
            )
        ),
        broad_watch_period_seconds=_number(
            env,
            "PERCOLERT_BROAD_WATCH_PERIOD_SECONDS",
            default.broad_watch_period_seconds,
            minimum=1,
        ),
        percolate_batch_size=int(
            _number(env, "PERCOLERT_PERCOLATE_BATCH_SIZE", default.percolate_batch_size, minimum=1)
        ),
        percolate_concurrency=int(
            _number(
                env, "PERCOLERT_PERCOLATE_CONCURRENCY", default.percolate_concurrency, minimum=1
            )
        ),
        percolate_timeout=_optional_number(env, "PERCOLERT_PERCOLATE_TIMEOUT", minimum=0.1),
        socket_queue_size=int(
            _number(env, "PERCOLERT_SOCKET_QUEUE_SIZE", default.socket_queue_size, minimum=1)
        ),
        socket_close_seconds=_number(
            env, "PERCOLERT_SOCKET_CLOSE_SECONDS", default.socket_close_seconds, minimum=0.1
        ),
        head_timeout_seconds=_number(
            env, "PERCOLERT_HEAD_TIMEOUT_SECONDS", default.head_timeout_seconds, minimum=0.1
        ),
        body_timeout_seconds=_number(
            env, "PERCOLERT_BODY_TIMEOUT_SECONDS", default.body_timeout_seconds, minimum=0.1
        ),
        reconnect_grace_seconds=_number(
            env, "PERCOLERT_RECONNECT_GRACE_SECONDS", default.reconnect_grace_seconds, minimum=0
        ),
        lease_slack_seconds=_number(
            env, "PERCOLERT_LEASE_SLACK_SECONDS", default.lease_slack_seconds, minimum=0.1
        ),
        alerts_enabled=_flag(env, "PERCOLERT_ALERTS", default.alerts_enabled),
        rate_limits_enabled=_flag(env, "PERCOLERT_RATE_LIMITS", default.rate_limits_enabled),
        rate_limit_storage=storage,
        max_sockets_per_user=int(
            _number(env, "PERCOLERT_MAX_SOCKETS_PER_USER", default.max_sockets_per_user, minimum=1)
        ),
        trusted_proxies=_proxies(env, "PERCOLERT_TRUSTED_PROXIES"),
        admin_token=_admin_token(env, "PERCOLERT_ADMIN_TOKEN"),
        metrics_token=_admin_token(env, "PERCOLERT_METRICS_TOKEN"),
        new_sessions_burst=int(
            _number(env, "PERCOLERT_NEW_SESSIONS_BURST", default.new_sessions_burst, minimum=0)
        ),
        new_sessions_refill_seconds=_number(
            env,
            "PERCOLERT_NEW_SESSIONS_REFILL_SECONDS",
            default.new_sessions_refill_seconds,
            minimum=0.001,
        ),
        price_drop_min_percent=_number(
            env, "PERCOLERT_PRICE_DROP_MIN_PERCENT", default.price_drop_min_percent, minimum=0
        ),
        product_alert_min_interval_seconds=_duration(
            env, "PERCOLERT_PRODUCT_ALERT_MIN_INTERVAL", default.product_alert_min_interval_seconds
        ),
        product_alert_retention_days=_number(
            env,
            "PERCOLERT_PRODUCT_ALERT_RETENTION_DAYS",
            default.product_alert_retention_days,
            minimum=0.001,
        ),
        product_alert_poll_seconds=_number(
            env,
            "PERCOLERT_PRODUCT_ALERT_POLL_SECONDS",
            default.product_alert_poll_seconds,
            minimum=0.05,
        ),
        search_log_days=_number(
            env, "PERCOLERT_SEARCH_LOG_DAYS", default.search_log_days, minimum=0
        ),
        insights_cache_seconds=_number(
            env, "PERCOLERT_INSIGHTS_CACHE_SECONDS", default.insights_cache_seconds, minimum=0
        ),
        offsite=offsite_from_environment(env, SettingsError),
    )
    # Each rate limit `limit_X` is read from PERCOLERT_LIMIT_X, its default the field's.
    rate_limits = {
        field.name: _rate_limit(env, f"PERCOLERT_{field.name.upper()}", field.default)
        for field in msgspec.structs.fields(Settings)
        if field.name.startswith("limit_")
    }
    return msgspec.structs.replace(settings, **rate_limits)


def default_instance_id(settings: Settings) -> str:
    """An id for an instance that was given none: where it listens, and a random part so
    that a restart on the same port is another instance."""
    return f"{settings.host}:{settings.port}:{secrets.token_hex(3)}"
