"""Watches: a shopper's spec becomes a stored percolator query; create, list, remove, seed.

A watch's query is a conjunction of `term` filters on the app-normalised search text (or one
`match_phrase` for exact phrases), plus optional category and price filters on what the
search found. No scoring, no fuzzy or wildcard clauses: the percolator can then pre-select
candidate watches by their terms alone.

A watch with both a category and a price wants something in that category at or under that
price. The percolated document carries, per category found, its lowest price as one keyword,
`<category>\x1f<cents, 10 digits>`; with fixed-width digits, keyword order is price order, so
the watch is one `range` over its category's keywords. (A nested document per category would
say the same, but makes every percolation index several Lucene documents.)

A watch may instead name one product by its `sku` (product_watch.py): it is made here too,
once its product is found in the catalog, and its name becomes the watch's `terms`.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import elasticsearch
import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.core.locks import LocalLocks
from percolert.core.messages import (
    TERMS_MAX_LENGTH,
    Frequency,
    Notify,
    ProductWatchChange,
    Watch,
    WatchSpec,
)
from percolert.core.settings import Settings
from percolert.core.text import STOP_WORDS, TextNormalizer
from percolert.core.times import iso_from_milliseconds
from percolert.engine.reads import DirectReads, Reads
from percolert.watches import product_watch, reachability
from percolert.watches.load import BulkLoad, LoadError, LoadReport, Prepared

_SOURCE = ["owner", "is_default", "spec", "created_at", "notify", "frequency"]
_MAX_DEFAULTS = 1000
# The ids `watch_id` issues, and nothing else: an id is checked before it reaches
# Elasticsearch's URL, where `_search` or `..` would name an endpoint rather than a document.
_WATCH_ID = re.compile(r"default-[0-9a-f]{16}|w-[0-9a-f]{20}")


class WatchError(Exception):
    """A watch request the domain refuses; the HTTP layer maps each kind to a status."""


class InvalidWatch(WatchError):
    pass


class UnknownCategory(WatchError):
    def __init__(self, category: str, known: Collection[str]) -> None:
        listed = ", ".join(sorted(known)) if known else "none yet"
        super().__init__(f"unknown category {category!r}; the catalog's categories: {listed}")


class UnknownProduct(WatchError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"the catalog has no product with sku {sku!r}")


class DuplicateWatch(WatchError):
    def __init__(self, message: str = "you already watch exactly this") -> None:
        super().__init__(message)


class TooManyWatches(WatchError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"you already have {limit} watches, the most allowed; remove one first")


class WatchNotFound(WatchError):
    def __init__(self) -> None:
        super().__init__("no such watch of yours")


class WatchLoadFailed(Exception):
    """A bulk load (`add_many`) in which some watches were refused; the others are stored.
    Not a WatchError: no HTTP request loads in bulk."""

    def __init__(self, report: LoadReport) -> None:
        first = report.errors[0]
        super().__init__(
            f"{report.refused} watches refused; the first, #{first.ref}: {first.reason}"
        )
        self.report = report


class _StoredSpec(msgspec.Struct):
    terms: str  # a product watch's: its product's name when it was made
    phrase: bool = False
    category: str | None = None
    max_price: float | None = None
    sku: str | None = None
    on: list[ProductWatchChange] | None = None


class _StoredWatch(msgspec.Struct):
    spec: _StoredSpec
    owner: str | None = None
    is_default: bool = False
    created_at: str = ""
    notify: Notify = "both"
    frequency: Frequency | None = None


def clean_spec(spec: WatchSpec) -> WatchSpec:
    """Whitespace trimmed, category lower-cased: two specs that mean the same are equal.
    The length limit applies to the trimmed words, not to the spaces around them."""
    terms = " ".join(spec.terms.split())
    if len(terms) > TERMS_MAX_LENGTH:
        raise InvalidWatch(f"terms may be at most {TERMS_MAX_LENGTH} characters")
    category = spec.category.strip().lower() if spec.category else None
    return WatchSpec(
        terms=terms,
        phrase=spec.phrase,
        category=category or None,
        max_price=spec.max_price,
        notify=spec.notify,
        frequency=spec.frequency,
    )


_PRICE_DIGITS = 10  # cents: catalog prices stop at 10,000,000.00
_SEPARATOR = "\x1f"  # in no category name


def category_price(category: str, price: float) -> str:
    """The percolated document's `category_prices` keyword for the lowest `price` found in
    `category` (rounded to the cent, as the catalog stores prices)."""
    cents = min(max(round(price * 100), 0), 10**_PRICE_DIGITS - 1)
    return f"{category}{_SEPARATOR}{cents:0{_PRICE_DIGITS}d}"


def _found_filters(category: str | None, max_price: float | None) -> list[dict[str, Any]]:
    """What the search must have found: something in `category`, at or under `max_price`."""
    if category is not None and max_price is not None:
        # Floored to the cent, but not below a price the catalog stores as exactly it
        # (79.99 * 100 is 7998.999…).
        cents = min(math.floor(max_price * 100 + 1e-6), 10**_PRICE_DIGITS - 1)
        within = f"{category}{_SEPARATOR}{cents:0{_PRICE_DIGITS}d}"
        return [{"range": {"category_prices": {"gte": category + _SEPARATOR, "lte": within}}}]
    if category is not None:
        return [{"term": {"categories": category}}]
    if max_price is not None:
        return [{"range": {"min_price": {"lte": max_price}}}]
    return []


def meaning(
    tokens: list[str], *, phrase: bool, category: str | None, max_price: float | None
) -> tuple[object, ...]:
    """What a watch matches, as a comparable value: two watches with the same meaning are
    duplicates. Word order and repeats matter only to a phrase of several words."""
    ordered = phrase and len(tokens) > 1
    words = tuple(tokens) if ordered else tuple(sorted(set(tokens)))
    return (ordered, words, category, max_price)


def build_query(
    tokens: list[str], *, phrase: bool, category: str | None, max_price: float | None
) -> dict[str, Any]:
    """The percolator query for a watch, in filter context."""
    filters: list[dict[str, Any]]
    if phrase and len(tokens) > 1:
        filters = [{"match_phrase": {"search_text": " ".join(tokens)}}]
    else:
        filters = [{"term": {"search_text": token}} for token in dict.fromkeys(tokens)]
    filters.extend(_found_filters(category, max_price))
    return {"bool": {"filter": filters}}


def upgrade_query(source: dict[str, Any]) -> dict[str, Any]:
    """A stored watch of mapping v3 or older made current: its category and price filters
    judged together (v4), the search-text filters kept as they are. A product watch (v8) has
    no search-text filters: its query is built again from its spec."""
    spec = source["spec"]
    if spec.get("sku") is not None:
        on = spec.get("on") or list(product_watch.WATCHABLE)
        source["query"] = product_watch.build_query(spec["sku"], on, spec.get("max_price"))
        return source
    text_filters = [
        clause
        for clause in source["query"]["bool"]["filter"]
        if "search_text" in next(iter(clause.values()))
    ]
    found = _found_filters(spec.get("category"), spec.get("max_price"))
    source["query"] = {"bool": {"filter": text_filters + found}}
    return source


def watch_id(owner: str | None, tokens: list[str], spec: WatchSpec) -> str:
    """Deterministic: the same watch twice is the same document, so duplicates collide and
    seeding the same default again changes nothing."""
    signature = msgspec.json.encode([owner, tokens, spec.phrase, spec.category, spec.max_price])
    digest = hashlib.sha256(signature).hexdigest()
    return f"default-{digest[:16]}" if owner is None else f"w-{digest[:20]}"


def is_watch_id(text: str) -> bool:
    """True for ids of the form `watch_id` issues."""
    return _WATCH_ID.fullmatch(text) is not None


def _to_watch(document_id: str, stored: _StoredWatch) -> Watch:
    return Watch(
        id=document_id,
        terms=stored.spec.terms,
        phrase=stored.spec.phrase,
        category=stored.spec.category,
        max_price=stored.spec.max_price,
        is_default=stored.is_default,
        created_at=stored.created_at,
        notify=stored.notify,
        sku=stored.spec.sku,
        on=stored.spec.on,
        frequency=stored.frequency,
    )


class SeedFileError(ValueError):
    """A default-watches file that cannot be used; `problems` are (line, reason) pairs."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        super().__init__("; ".join(f"line {line}: {reason}" for line, reason in problems))
        self.problems = problems


def _names_something(word: str) -> bool:
    """A word that says what is watched: not a stop word, a lone letter or a bare number.
    (A single character of a script without spaces, such as Chinese, is a word.)"""
    if word in STOP_WORDS or word.isdigit():
        return False
    return len(word) > 1 or not word.isascii()


def watch_tokens(normalizer: TextNormalizer, spec: WatchSpec) -> list[str]:
    """The words a (clean) watch matches on. InvalidWatch if its terms have none, or only
    words that name nothing: a watch on "the" or "5" would match a large share of every
    search, a firehose of other shoppers' activity rather than something wanted."""
    tokens = normalizer.watch_tokens(spec.terms, phrase=spec.phrase)
    if not tokens:
        raise InvalidWatch("terms must contain at least one word")
    if not any(_names_something(word) for word in normalizer.words(spec.terms)):
        raise InvalidWatch(
            "terms must name something: at least one word that is not a stop word "
            "(such as 'the' or 'for'), a single letter or a bare number"
        )
    return tokens


def check_default(spec: WatchSpec) -> None:
    """InvalidWatch for a default watch that could never alert anyone: default watches do
    not fire on products (everyone would hear of every arrival), so none names a product."""
    if spec.sku is not None:
        raise InvalidWatch(
            "a default watch cannot name a product (sku): default watches never alert of "
            "products; a shopper watches a product with a watch of their own"
        )
    if spec.notify == "products":
        raise InvalidWatch("a default watch never alerts of products: notify searches or both")


def check_kind(spec: WatchSpec) -> None:
    """InvalidWatch unless `spec` is a watch of words or a product watch, not both or
    neither (product_watch.spec_problem)."""
    problem = product_watch.spec_problem(spec)
    if problem is not None:
        raise InvalidWatch(problem)


def parse_seed_file(data: bytes, normalizer: TextNormalizer) -> list[WatchSpec]:
    """A JSON array of watch specs. Every bad entry is reported with its line number."""

    def line_at(offset: int) -> int:
        return data.count(b"\n", 0, offset) + 1

    try:
        entries = msgspec.json.decode(data, type=list[msgspec.Raw])
    except msgspec.ValidationError as error:
        raise SeedFileError([(1, f"expected a JSON array of watches ({error})")]) from None
    except msgspec.DecodeError as error:
        message = str(error)
        position = message.rsplit("byte ", 1)[-1].rstrip(")")
        line = line_at(int(position)) if position.isdigit() else line_at(len(data.rstrip()))
        raise SeedFileError([(line, f"not valid JSON: {message}")]) from None
    specs: list[WatchSpec] = []
    problems: list[tuple[int, str]] = []
    cursor = 0
    for raw in entries:
        start = data.find(bytes(raw), cursor)
        cursor = start + len(raw)
        try:
            spec = msgspec.json.decode(raw, type=WatchSpec)
            check_default(spec)
            check_kind(spec)
            watch_tokens(normalizer, clean_spec(spec))
        except (msgspec.ValidationError, InvalidWatch) as error:
            problems.append((line_at(start), f"invalid watch: {error}"))
        else:
            specs.append(spec)
    if problems:
        raise SeedFileError(problems)
    return specs


class SeedReport(msgspec.Struct):
    added: int = 0
    unchanged: int = 0
    removed: int = 0


# owner -> a context in which no other add of the owner's runs
OwnerLock = Callable[[str], AbstractAsyncContextManager[None]]


class WatchStore:
    """Watches in the percolator index; every change is refreshed before it returns, so the
    very next search sees it."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        alias: str,
        normalizer: TextNormalizer,
        *,
        max_per_user: int,
        known_categories: Callable[[], Awaitable[Collection[str]]] | None = None,
        product_name: Callable[[str], Awaitable[str | None]] | None = None,
        lease_seconds: float | None = None,
        owner_lock: OwnerLock | None = None,
    ) -> None:
        """`lease_seconds`: how long a watch its owner adds is leased as reachable
        (`reachability.lease_seconds`; the default settings' if None). `owner_lock(owner)`
        holds one owner's adds apart (count, then insert); by default within this process,
        with several instances across them (the shared broker's lock). `product_name(sku)`:
        the catalog's name for a product, None if it has none; without it, no product
        watch can be added (the admin CLI adds default watches only)."""
        self._client = client
        self._reads = DirectReads(client)
        self._alias = alias
        self._normalizer = normalizer
        self._max_per_user = max_per_user
        # Where `add` learns which categories exist; None (the admin CLI, which may seed
        # before the catalog is loaded): any category is taken.
        self._known_categories = known_categories
        self._product_name = product_name
        # Count-then-insert must not interleave for one user, or concurrent adds pass the
        # limit together.
        self._owner_lock = owner_lock or LocalLocks()
        self._lease_seconds = (
            reachability.lease_seconds(Settings()) if lease_seconds is None else lease_seconds
        )
        self._stamp_ms = -1
        self._stamp = ""

    def prepare(self, owner: str | None, spec: WatchSpec) -> tuple[str, dict[str, Any]]:
        """The id and stored document of a watch of words (nothing is sent)."""
        if owner is None:
            check_default(spec)
        elif spec.sku is not None:
            raise InvalidWatch(
                "a product watch is added on its own, once its product is found in the "
                "catalog; it cannot be loaded in bulk"
            )
        check_kind(spec)
        spec = clean_spec(spec)
        tokens = watch_tokens(self._normalizer, spec)
        document_id = watch_id(owner, tokens, spec)
        what = msgspec.to_builtins(spec)
        notify = what.pop("notify")  # a preference, kept beside what the watch means
        frequency = what.pop("frequency")  # another
        del what["sku"], what["on"]  # a product watch's (prepare_product)
        document = {
            "query": build_query(
                tokens, phrase=spec.phrase, category=spec.category, max_price=spec.max_price
            ),
            "owner": owner,
            "is_default": owner is None,
            "spec": what,
            # Doc values for percolation (mappings/watches.json).
            "terms": spec.terms,
            "watch_id": document_id,
            "created_at": self._now(),
            "notify": notify,
        }
        if frequency is not None:
            document["frequency"] = frequency
        if spec.max_price is not None:
            document["max_price"] = spec.max_price
        if spec.category is not None:
            document["category"] = spec.category
        return document_id, document

    async def prepare_product(self, owner: str, spec: WatchSpec) -> tuple[str, dict[str, Any]]:
        """The id and stored document of a product watch: InvalidWatch for a spec that is
        not one, UnknownProduct when the catalog has no product with its sku."""
        check_kind(spec)
        assert spec.sku is not None  # check_kind passed a spec without terms
        if self._product_name is None:
            raise InvalidWatch("product watches are not taken here: no catalog to find them in")
        name = await self._product_name(spec.sku)
        if name is None:
            raise UnknownProduct(spec.sku)
        on = product_watch.changes(spec)
        document_id = product_watch.watch_id(owner, spec.sku)
        stored = _StoredSpec(terms=name, max_price=spec.max_price, sku=spec.sku, on=on)
        document: dict[str, Any] = {
            "query": product_watch.build_query(spec.sku, on, spec.max_price),
            "owner": owner,
            "is_default": False,
            "spec": msgspec.to_builtins(stored),
            # Doc values for percolation, as a watch of words has (prepare), and its sku:
            # which product alerts name, and what a product's watchers are counted by.
            "terms": name,
            "watch_id": document_id,
            "created_at": self._now(),
            # Whatever the spec said ("both" by default): a product watch hears of no search.
            "notify": "products",
            "sku": spec.sku,
        }
        if spec.frequency is not None:
            document["frequency"] = spec.frequency
        if spec.max_price is not None:
            document["max_price"] = spec.max_price
        return document_id, document

    def _now(self) -> str:
        """The time, to the millisecond, in ISO form: formatted once a millisecond, as a bulk
        load prepares a watch in about 10 µs and formatting was a fifth of that."""
        millis = time.time_ns() // 1_000_000
        if millis != self._stamp_ms:
            self._stamp = iso_from_milliseconds(millis)
            self._stamp_ms = millis
        return self._stamp

    async def add(self, owner: str | None, spec: WatchSpec) -> Watch:
        """Store a watch (owner None: a default watch). Raises InvalidWatch, UnknownCategory,
        UnknownProduct, DuplicateWatch (the owner has one that means the same, or watches
        the same product) or TooManyWatches."""
        if owner is not None and spec.sku is not None:
            document_id, document = await self.prepare_product(owner, spec)
        else:
            document_id, document = self.prepare(owner, spec)
            await self._check_category(document["spec"]["category"])
        if owner is None:
            await self._client.index(
                index=self._alias, id=document_id, document=document, refresh=True
            )
        else:
            # Its owner is here now: the watch is leased as reachable, so that search
            # percolation matches it at once (reachability.py; the owner's sockets renew it).
            document["reachable_until"] = reachability.lease_until(self._lease_seconds)
            async with self._owner_lock(owner):
                await self._add_for_user(owner, document_id, document)
        return _to_watch(document_id, msgspec.convert(document, _StoredWatch))

    async def _check_category(self, category: str | None) -> None:
        """A category the catalog does not have could never match: refused. Elasticsearch
        failing to tell raises its own error (a 503, as for any other request)."""
        if category is None or self._known_categories is None:
            return
        known = await self._known_categories()
        if category not in known:
            raise UnknownCategory(category, known)

    def _meaning_of(self, spec: _StoredSpec) -> tuple[object, ...]:
        if spec.sku is not None:
            return ("sku", spec.sku)  # whatever its `on` and price: one product, one watch
        tokens = self._normalizer.watch_tokens(spec.terms, phrase=spec.phrase)
        return meaning(tokens, phrase=spec.phrase, category=spec.category, max_price=spec.max_price)

    async def _add_for_user(self, owner: str, document_id: str, document: dict[str, Any]) -> None:
        # Ids follow the words' order, so the same words reordered would not collide: the
        # owner's watches are compared by meaning (at most `max_per_user` of them).
        owned = await self._client.search(
            index=self._alias,
            query={"term": {"owner": owner}},
            size=self._max_per_user,
            source_includes=["spec"],
            track_total_hits=True,
        )
        spec = msgspec.convert(document["spec"], _StoredSpec)
        wanted = self._meaning_of(spec)
        duplicate = (
            DuplicateWatch()
            if spec.sku is None
            else DuplicateWatch(
                f"you already watch product {spec.sku}; remove that watch to watch it otherwise"
            )
        )
        for hit in owned["hits"]["hits"]:
            if self._meaning_of(msgspec.convert(hit["_source"]["spec"], _StoredSpec)) == wanted:
                raise duplicate
        if owned["hits"]["total"]["value"] >= self._max_per_user:
            raise TooManyWatches(self._max_per_user)
        try:
            await self._client.create(
                index=self._alias, id=document_id, document=document, refresh=True
            )
        except elasticsearch.ConflictError:
            raise duplicate from None

    async def add_many(self, watches: Iterable[tuple[str | None, WatchSpec]]) -> int:
        """Bulk-load watches (see `load`); returns how many are stored now (loaded, or there
        already). Raises WatchLoadFailed if any was refused."""
        report = await self.load((ref, owner, spec) for ref, (owner, spec) in enumerate(watches))
        if report.errors:
            raise WatchLoadFailed(report)
        return report.loaded + report.duplicates

    async def load(
        self,
        watches: Iterable[tuple[int, str | None, WatchSpec] | LoadError],
        *,
        chunk_size: int = 2000,
        in_flight: int = 2,
        on_done: Callable[[int], None] | None = None,
        on_error: Callable[[LoadError], None] | None = None,
    ) -> LoadReport:
        """Bulk-load (ref, owner, spec) watches, each prepared as `add` prepares it (so the
        same watch twice is the same document: it collides, and is counted as a duplicate),
        without the per-user limit or the category check (the admin and benchmark path).
        A watch the domain or Elasticsearch refuses is reported by its ref; the others are
        loaded, and searchable when this returns (watch_load.py)."""

        def prepared() -> Iterator[Prepared | LoadError]:
            for item in watches:
                if isinstance(item, LoadError):
                    yield item
                    continue
                ref, owner, spec = item
                try:
                    yield (ref, *self.prepare(owner, spec))
                except WatchError as error:
                    yield LoadError(ref, f"invalid watch: {error}")

        bulk = BulkLoad(
            self._client,
            self._alias,
            chunk_size=chunk_size,
            in_flight=in_flight,
            on_done=on_done,
            on_error=on_error,
        )
        return await bulk.run(prepared())

    async def _owned(self, owner: str | None, watch_id: str) -> _StoredWatch:
        """The stored watch `watch_id` if `owner` owns it (None: a default watch);
        WatchNotFound otherwise, whether it is missing or someone else's."""
        if not is_watch_id(watch_id):
            raise WatchNotFound()
        try:
            found = await self._client.get(index=self._alias, id=watch_id, source_includes=_SOURCE)
        except elasticsearch.NotFoundError:
            raise WatchNotFound() from None
        stored = msgspec.convert(found["_source"], _StoredWatch)
        if stored.owner != owner or stored.is_default != (owner is None):
            raise WatchNotFound()
        return stored

    async def remove(self, owner: str | None, watch_id: str) -> Watch:
        """Delete a watch `owner` owns (None: a default watch); WatchNotFound otherwise.
        Returns the watch as it was."""
        stored = await self._owned(owner, watch_id)
        try:
            await self._client.delete(index=self._alias, id=watch_id, refresh=True)
        except elasticsearch.NotFoundError:
            raise WatchNotFound() from None
        return _to_watch(watch_id, stored)

    async def set_notify(self, owner: str, watch_id: str, notify: Notify) -> Watch:
        """Make `owner`'s own watch notify of `notify`; WatchNotFound for any other watch
        (default watches included: they are everyone's, so nobody's to change). A product
        watch notifies of products whatever it is asked: InvalidWatch for `searches`, and
        `both` leaves it as it is."""
        stored = await self._owned(owner, watch_id)
        if stored.spec.sku is not None:
            if notify == "searches":
                raise InvalidWatch(
                    "a product watch alerts of its product's changes only, never of searches"
                )
            return _to_watch(watch_id, stored)
        try:
            # Only `notify` changes: the query, and so the id, stay what they mean.
            await self._client.update(
                index=self._alias, id=watch_id, doc={"notify": notify}, refresh=True
            )
        except elasticsearch.NotFoundError:  # removed meanwhile
            raise WatchNotFound() from None
        return _to_watch(watch_id, msgspec.structs.replace(stored, notify=notify))

    async def set_frequency(self, owner: str, watch_id: str, frequency: Frequency) -> Watch:
        """How often `owner`'s own watch may e-mail them when away; WatchNotFound for any
        other watch."""
        stored = await self._owned(owner, watch_id)
        if not await self.turn_frequency(watch_id, frequency):
            raise WatchNotFound()  # removed meanwhile
        return _to_watch(watch_id, msgspec.structs.replace(stored, frequency=frequency))

    async def turn_frequency(self, watch_id: str, frequency: Frequency) -> bool:
        """Set a watch's e-mail frequency whoever owns it (a signed unsubscribe link names
        it); False when there is no such watch."""
        if not is_watch_id(watch_id):
            return False
        try:
            await self._client.update(
                index=self._alias, id=watch_id, doc={"frequency": frequency}, refresh=True
            )
        except elasticsearch.NotFoundError:
            return False
        return True

    async def frequencies(self, watch_ids: Iterable[str]) -> dict[str, Frequency | None]:
        """The e-mail frequency of each watch that exists (None: its owner's choice)."""
        ids = sorted({watch_id for watch_id in watch_ids if is_watch_id(watch_id)})
        if not ids:
            return {}
        response = await self._client.mget(
            index=self._alias, ids=ids, source_includes=["frequency"]
        )
        return {
            doc["_id"]: (doc.get("_source") or {}).get("frequency")
            for doc in response["docs"]
            if doc.get("found")
        }

    async def _search(
        self,
        query: dict[str, Any],
        size: int,
        sort: list[dict[str, str]],
        reads: Reads | None = None,
    ) -> list[tuple[str | None, Watch]]:
        """(owner, watch) for the watches matching `query`."""
        body = {"query": query, "size": size, "_source": {"includes": _SOURCE}, "sort": sort}
        response = await (reads or self._reads).search(self._alias, body)
        found = []
        for hit in response["hits"]["hits"]:
            stored = msgspec.convert(hit["_source"], _StoredWatch)
            found.append((stored.owner, _to_watch(hit["_id"], stored)))
        return found

    async def _find(self, query: dict[str, Any], size: int) -> list[Watch]:
        newest_first = [{"created_at": "desc"}]
        return [watch for _, watch in await self._search(query, size, newest_first)]

    async def remove_any(self, watch_id: str) -> None:
        """Admin removal, whoever owns the watch; WatchNotFound if there is none."""
        if not is_watch_id(watch_id):
            raise WatchNotFound()
        try:
            await self._client.delete(index=self._alias, id=watch_id, refresh=True)
        except elasticsearch.NotFoundError:
            raise WatchNotFound() from None

    async def watchers_of(self, sku: str) -> int:
        """How many shoppers watch the product `sku` (with a product watch; default watches
        never name one). One owner has at most one watch of a product (its id is of the
        owner and the sku), so counting the watches counts the owners, exactly."""
        response = await self._client.count(
            index=self._alias,
            query={"bool": {"filter": [{"term": {"sku": sku}}, {"term": {"is_default": False}}]}},
        )
        return int(response["count"])

    async def everything(self, size: int = 10_000) -> list[tuple[str | None, Watch]]:
        """(owner, watch) for every watch, newest first (the admin listing)."""
        return await self._search({"match_all": {}}, size, [{"created_at": "desc"}])

    async def owned_by(self, owner: str) -> list[Watch]:
        return await self._find(
            {"bool": {"filter": [{"term": {"owner": owner}}]}}, self._max_per_user
        )

    async def defaults(self) -> list[Watch]:
        return await self._find(
            {"bool": {"filter": [{"term": {"is_default": True}}]}}, _MAX_DEFAULTS
        )

    async def visible_to(self, owner: str, reads: Reads | None = None) -> list[Watch]:
        """The user's own watches, newest first, then the default watches — one request,
        since every socket greeting and every watch change asks for it (a greeting's
        through `reads`, which sends those asked at once together)."""
        query = {
            "bool": {
                "should": [{"term": {"owner": owner}}, {"term": {"is_default": True}}],
                "minimum_should_match": 1,
            }
        }
        own_then_defaults = [{"is_default": "asc"}, {"created_at": "desc"}]
        size = self._max_per_user + _MAX_DEFAULTS
        found = await self._search(query, size, own_then_defaults, reads)
        return [watch for _, watch in found]

    async def seed_defaults(self, specs: Iterable[WatchSpec]) -> SeedReport:
        """Make the default watches exactly `specs`: add new ones, drop ones no longer listed."""
        report = SeedReport()
        existing = {watch.id for watch in await self.defaults()}
        wanted: set[str] = set()
        for spec in specs:
            document_id, document = self.prepare(None, spec)
            wanted.add(document_id)
            if document_id in existing:
                report.unchanged += 1
                continue
            await self._client.index(index=self._alias, id=document_id, document=document)
            report.added += 1
        for stale in existing - wanted:
            await self._client.delete(index=self._alias, id=stale)
            report.removed += 1
        await self._client.indices.refresh(index=self._alias)
        return report
