"""k-nearest-neighbour product search: what the website backend calls.

Every function here is a thin, validated call of the SQL functions that the migrations create
(``imgsearch_similar``, ``imgsearch_similar_to_sku``, ``imgsearch_cheaper``), so Python and non-Python backends
get the same results from the same code. See docs/filtered-search.md for how filtered search stays exact.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa
from pgvector import Vector as VectorValue
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from imgsearch import local_features, visual_words
from imgsearch.attributes import filters_json
from imgsearch.catalogue import Listing, SpaceLike, check_space, shop_fields_sql
from imgsearch.db import (
    RETRY_WAITS,
    binary_vector,
    execute_direct,
    is_conflict,
    is_outage,
    reconnect_waits,
    retrying,
    transaction,
    translate_error,
)
from imgsearch.errors import InvalidQueryError, StaleVocabularyError
from imgsearch.images import Crop, ImageSource, photo_size, read_source, validate_crop
from imgsearch.local_features import LocalFeatures
from imgsearch.tables import DIMENSION
from imgsearch.validation import price_limit, text_problem, unit_vector

if TYPE_CHECKING:
    from imgsearch.embedding import Featurizer

MAX_K = 1000

Bind = Engine | Connection
Price = Decimal | float | int | str


@dataclass(frozen=True)
class SearchResult(Listing):
    """One product returned by a search, best first.

    ``distance`` is the cosine distance (0 = same direction, 2 = opposite); smaller is closer; ``None`` for a search
    by words alone (:func:`search_words`), which has no vector to measure it from.

    A search by photo with verification (:func:`search_image`) also says what the result is: ``match`` is
    ``"exact"`` when local features proved that the photo shows this very product (``inliers`` keypoints agree
    with one homography; ``box`` is where it lies in the photo, ``(left, top, right, bottom)`` in its pixels),
    ``"similar"`` for a visual neighbour. Searches that verify nothing leave the three as ``None``.
    """

    distance: float | None
    match: str | None = None
    inliers: int | None = None
    box: tuple[float, float, float, float] | None = None
    #: Its place in the whole ranking (1 = best), counting the pages before this one.
    rank: int | None = None

    @property
    def cursor(self) -> str | None:
        """Pass it as ``cursor`` to the same search for the results after this one (:func:`page`)."""
        return None if self.rank is None else _encode_cursor(self, self.rank)


def validate_vector(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    """``vector`` as the search sends it: float32, length 1 (see :func:`imgsearch.validation.unit_vector`).

    Raises:
        InvalidQueryError: not 512 finite numbers, or all zeros.
    """
    return unit_vector(vector)


def _validate_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"{name} must be an integer between 1 and {MAX_K}, got {k!r}")
    return int(k)


def _text_list(values: Iterable[str] | str | None, what: str) -> list[str] | None:
    if values is None:
        return None
    items = [values] if isinstance(values, str) else list(values)
    if not all(isinstance(v, str) for v in items):
        raise InvalidQueryError(f"{what} must be strings")
    for item in items:
        _query_text(item, what)
    return items


def _query_text(value: str, what: str) -> str:
    """``value`` if PostgreSQL can take it as text: a NUL character or a lone surrogate (bytes that were not
    UTF-8) is refused here, as bad input, instead of failing in the driver."""
    if not isinstance(value, str):
        raise InvalidQueryError(f"{what} must be text")
    if problem := text_problem(value):
        raise InvalidQueryError(f"{what} {problem}")
    return value


def _with_shop_fields(call: str) -> sa.TextClause:
    """A search function's rows, in its order, each with its product's ``shop_product_id`` and ``page_url``
    (revision 0017, :func:`imgsearch.catalogue.shop_fields_sql`): still one statement, one round trip."""
    # Looked up row by row (a scalar subquery the planner keeps as such): joined, the planner takes the function
    # for 1000 rows and may hash the whole products table.
    return sa.text(
        f"SELECT s.*, {shop_fields_sql('x.j')} FROM {call} WITH ORDINALITY AS s "
        "CROSS JOIN LATERAL (SELECT (SELECT to_jsonb(p) FROM products p WHERE p.sku = s.sku) AS j) x "
        "ORDER BY s.ordinality"
    )


#: Each search statement's twin that passes the attribute filters (revision 0018), by statement.
_FILTERED: dict[sa.TextClause, sa.TextClause] = {}
#: The hot path's twin of a search statement: the shop's fields read by name, three index lookups per result instead
#: of a JSON copy of the whole product row (0.2 ms less per search with 10 results). A catalogue an older revision
#: left has no such columns; the statement itself (read by key) answers there.
_NAMED: dict[sa.TextClause, sa.TextClause] = {}


def _with_named_shop_fields(call: str) -> sa.TextClause:
    lookup = "(SELECT p.{} FROM products p WHERE p.sku = s.sku)"
    return sa.text(
        f"SELECT s.*, {lookup.format('shop_product_id')} AS shop_product_id, {lookup.format('page_url')} AS page_url, "
        f"coalesce({lookup.format('attributes')}, '{{}}'::jsonb) AS attributes "
        f"FROM {call} WITH ORDINALITY AS s ORDER BY s.ordinality"
    )


def _search_call(call: str, *binds: sa.BindParameter[object]) -> sa.TextClause:
    """The statement of a search function's ``call`` (:func:`_with_shop_fields`), and its twin with the attribute
    filters in :data:`_FILTERED`: only a search that filters passes that argument, so that the others also run on a
    catalogue an older revision left."""
    plain = _with_shop_fields(call).bindparams(*binds)
    filtered_call = call.removesuffix(")") + ", filters => CAST(:filters AS jsonb))"
    _FILTERED[plain] = _with_shop_fields(filtered_call).bindparams(*binds)
    _NAMED[plain] = _with_named_shop_fields(call).bindparams(*binds)
    _NAMED[_FILTERED[plain]] = _with_named_shop_fields(filtered_call).bindparams(*binds)
    return plain


_VECTORS = sa.bindparam("query", type_=postgresql.ARRAY(Vector(DIMENSION)))
# The query vector is bound as pgvector's binary form (db.binary_vector), not as text.
_SIMILAR = _search_call(
    "imgsearch_similar(CAST(:query AS vector), :k, CAST(:categories AS text[]), :in_stock_only, "
    "CAST(:max_price AS numeric), CAST(:exclude AS text[]), CAST(:below_price AS numeric))"
)
_SIMILAR_MULTI = _search_call(
    "imgsearch_similar_multi(CAST(:query AS vector[]), :k, CAST(:categories AS text[]), :in_stock_only, "
    "CAST(:max_price AS numeric), CAST(:exclude AS text[]), CAST(:below_price AS numeric))",
    _VECTORS,
)
#: Most query vectors one search takes (a shopper's photos, a product's photos).
MAX_QUERY_VECTORS = 100
_SIMILAR_MANY = _search_call(
    "imgsearch_similar_many(CAST(:query AS vector[]), :k, CAST(:categories AS text[]), :in_stock_only, "
    "CAST(:max_price AS numeric), CAST(:exclude AS text[]), CAST(:below_price AS numeric))",
    _VECTORS,
)
#: Most searches one call of :func:`search_many` makes (imgsearch_similar_many's limit).
MAX_SEARCHES = 1000
_SIMILAR_TO_SKU = _search_call(
    "imgsearch_similar_to_sku(:sku, :k, CAST(:categories AS text[]), :in_stock_only, CAST(:max_price AS numeric))"
)
_CHEAPER = _search_call("imgsearch_cheaper(:sku, :k, :same_category)")
_PHOTO_CANDIDATES = _search_call(
    "imgsearch_photo_candidates(CAST(:query AS vector), :k, :extractor, CAST(:words AS integer[]), "
    ":word_n, :vocabulary, :model, :weights_id, :preprocessing, CAST(:categories AS text[]), :in_stock_only, "
    "CAST(:max_price AS numeric), CAST(:exclude AS text[]))"
)
# A search by vectors and words, the two rankings fused; and by words alone (revision 0019).
_SIMILAR_WORDS = _with_shop_fields(
    "imgsearch_similar_words(CAST(:query AS vector[]), :text, :k, CAST(:categories AS text[]), :in_stock_only, "
    "CAST(:max_price AS numeric), CAST(:exclude AS text[]), CAST(:filters AS jsonb), :text_weight)"
).bindparams(_VECTORS)
_SEARCH_WORDS = _with_shop_fields(
    "imgsearch_search_words(:text, :k, CAST(:categories AS text[]), :in_stock_only, CAST(:max_price AS numeric), "
    "CAST(:exclude AS text[]), CAST(:filters AS jsonb))"
)
# The page after a result, past the 1000th (revision 0020): by vectors, or by a catalogue product's photos.
_SIMILAR_AFTER = _with_shop_fields(
    "imgsearch_similar_after(CAST(:query AS vector[]), :after_distance, :after_sku, :k, CAST(:categories AS text[]), "
    ":in_stock_only, CAST(:max_price AS numeric), CAST(:exclude AS text[]), CAST(:filters AS jsonb))"
).bindparams(_VECTORS)
_SIMILAR_TO_SKU_AFTER = _with_shop_fields(
    "imgsearch_similar_after(imgsearch_product_photos(:sku), :after_distance, :after_sku, :k, "
    "CAST(:categories AS text[]), :in_stock_only, CAST(:max_price AS numeric), CAST(:exclude AS text[]), "
    "CAST(:filters AS jsonb))"
)
#: Longest words of one search.
MAX_TEXT = 1000
#: Statements run straight through psycopg (:func:`imgsearch.db.execute_direct`), and those taking one query vector.
_DIRECT = (_SIMILAR, _SIMILAR_MANY, _FILTERED[_SIMILAR], _FILTERED[_SIMILAR_MANY])
_ONE_VECTOR = (_SIMILAR, _PHOTO_CANDIDATES, _FILTERED[_SIMILAR], _FILTERED[_PHOTO_CANDIDATES])
#: Products a verified photo search checks with local features: the global search's top ones. Enough to hold
#: the photographed product for most shopper photos (docs/quality.md), few enough to verify in ~0.1 s.
VERIFY_CANDIDATES = 50
#: ...and the products sharing the most visual words with the photo (imgsearch/visual_words.py), which find a
#: printed product the global vector ranked low: 25 hold the right cover for 0.98 of the phone photos with 2,700
#: products in the catalogue (benchmarks/results/visual-words.md).
WORD_CANDIDATES = 25


#: What ``search_space`` may say: the active search space (a tuned one when ``imgsearch tune`` made one), or the raw
#: VGG16 vectors whatever is active (the SQL setting ``imgsearch.search_space``, read by ``imgsearch_search_space``).
SEARCH_SPACES = ("active", "raw")


def _settings(exact: bool = False, search_space: str | None = None, words: str | None = None) -> dict[str, str]:
    """The SQL session settings a search sets for itself (in its own transaction): ``words`` keeps only the
    products matching them (``imgsearch.words``, read by every search function)."""
    settings = {"imgsearch.exact_search": "on"} if exact else {}
    if words is not None:
        settings["imgsearch.words"] = _words(words) or ""
    if search_space is not None:
        if search_space not in SEARCH_SPACES:
            choices = ", ".join(SEARCH_SPACES)
            raise InvalidQueryError(f"search_space must be one of {choices}, got {str(search_space)[:40]!r}")
        if search_space != "active":
            settings["imgsearch.search_space"] = search_space
    return settings


def _words(text: object) -> str | None:
    """A search's words, checked (the database reads them: imgsearch_words_query), or ``None``."""
    if text is None:
        return None
    words = _query_text(text, "text")  # type: ignore[arg-type]
    if not words.strip() or len(words) > MAX_TEXT:
        raise InvalidQueryError(f"text must be 1 to {MAX_TEXT} characters of words to search for")
    return words


def _text_weight(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidQueryError(f"text_weight must be a number from 0 to 1, got {value!r:.40}")
    return float(value)


def _run(
    bind: Bind, statement: sa.TextClause, params: dict[str, object], settings: dict[str, str] | None = None
) -> list[SearchResult]:
    return [_result(r) for r in _rows(bind, statement, params, settings)]


def _result(row: sa.Row, **verification: object) -> SearchResult:
    """A result from a row of any search function (they share the columns), with what verification found."""
    return SearchResult(
        sku=row.sku,
        name=row.name,
        category=row.category,
        price=row.price,
        in_stock=row.in_stock,
        image=row.image,
        distance=None if row.distance is None else float(row.distance),
        shop_product_id=row.shop_product_id,
        page_url=row.page_url,
        attributes=row.attributes,
        **verification,  # type: ignore[arg-type]
    )


def _rows(
    bind: Bind, statement: sa.TextClause, params: dict[str, object], settings: dict[str, str] | None = None
) -> list[sa.Row]:
    # A search is read-only, so a connection lost to a server restart is simply tried again on a new one (the
    # pool drops the dead ones); a server that stays away is DatabaseUnavailableError after a few seconds.
    # So is one chosen as a deadlock's victim (a schema change taking its locks while searches run).
    own = isinstance(bind, Engine)
    if params.get("filters") is not None and statement in _FILTERED:
        statement = _FILTERED[statement]
    return retrying(
        lambda: retrying(lambda: _execute(bind, statement, params, settings), RETRY_WAITS if own else (), is_conflict),
        _SEARCH_RECONNECT_WAITS if own else (),
        is_outage,
    )


# A search waits at most a few seconds for the database (a website would rather show an error quickly).
_SEARCH_RECONNECT_WAITS = tuple(reconnect_waits(3.5))


def _execute(
    bind: Bind, statement: sa.TextClause, params: dict[str, object], settings: dict[str, str] | None
) -> list[sa.Row]:
    try:
        if settings:
            # The settings are local to a transaction, so it needs one around them and the search.
            with transaction(bind) as conn:
                for name, value in settings.items():
                    conn.execute(sa.text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
                return conn.execute(statement, _bound(conn, statement, params)).all()
        if isinstance(bind, Engine) and any(statement is s for s in _DIRECT):
            # The common search, straight through psycopg on a pooled connection: one round trip in autocommit.
            direct = {**params, "query": _binary(params["query"])}
            try:
                return execute_direct(bind, _NAMED[statement], direct)
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != "42703":  # not an older revision's catalogue
                    raise
            return execute_direct(bind, statement, direct)
        if isinstance(bind, Engine):
            # One statement, so autocommit: one round trip instead of BEGIN, query, COMMIT. At 1M products
            # the transaction's round trips cost as much as the search itself.
            with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return conn.execute(statement, _bound(conn, statement, params)).all()
        return bind.execute(statement, _bound(bind, statement, params)).all()
    except DBAPIError as exc:
        raise translate_error(exc) from None


def _bound(conn: Connection, statement: sa.TextClause, params: dict[str, object]) -> dict[str, object]:
    if any(statement is s for s in _ONE_VECTOR):
        return {**params, "query": binary_vector(conn, params["query"])}
    return params


def _binary(query_vectors: object) -> VectorValue | list[VectorValue]:
    """Query vectors as the parameter :func:`imgsearch.db.execute_direct` sends in binary (vector or vector[])."""
    if isinstance(query_vectors, list):
        return [VectorValue(v) for v in query_vectors]
    return VectorValue(query_vectors)


def search(
    bind: Bind,
    vector: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    k: int = 10,
    *,
    categories: Iterable[str] | str | None = None,
    in_stock_only: bool = True,
    max_price: Price | None = None,
    exclude_skus: Iterable[str] | None = None,
    below_price: Price | None = None,
    filters: Mapping[str, object] | None = None,
    text: str | None = None,
    text_filter: bool = False,
    text_weight: float | None = None,
    exact: bool = False,
    max_distance: float | None = None,
    offset: int = 0,
    cursor: str | None = None,
    search_space: str | None = None,
) -> list[SearchResult]:
    """The ``k`` products closest to ``vector`` by cosine distance, best first.

    Args:
        bind: SQLAlchemy engine or connection to the catalogue.
        vector: 512 finite numbers (a VGG16 embedding; its length does not matter, cosine), or several such
            vectors (up to 100, shape (n, 512): several photos of what is sought); a product's distance is its
            photo closest to any of them.
        k: how many results, 1 to 1000. Exactly ``k`` come back whenever at least ``k`` products match.
        categories: only these categories (any of them).
        in_stock_only: hide sold-out products (default, since the shop cannot sell them).
        max_price: price ceiling, inclusive. Products without a price are excluded when it is set.
        exclude_skus: never return these SKUs.
        below_price: strict price ceiling (``price < below_price``).
        filters: only products whose attributes match, e.g. ``{"brand": ["Acme", "Zenith"], "rating": {">=": 4}}``
            (:mod:`imgsearch.attributes`): still exactly ``k`` whenever ``k`` products match.
        text: words (web search syntax: ``"slim fit"`` a phrase, ``-red`` without) matched against the products'
            names, categories, text attributes and descriptions. They rank: the visual ranking and the words'
            are fused (``imgsearch_similar_words``; ``text_weight`` from 0, the photo only, to 1, the words only;
            default 0.5, by measurement). With ``text_filter`` they filter instead: only products matching them.
        exact: force exact search instead of the HNSW index (for measuring recall).
        max_distance: only results at most this cosine distance away (0 to 2): fewer than ``k``, or none, when
            nothing that close matches; ``None``, no threshold.
        offset: skip that many results first (a page further down: ``offset + k`` at most 1000).
        cursor: the ``cursor`` of a result of the same search: the ``k`` results after it (:func:`page`).
        search_space: ``"raw"`` searches the raw VGG16 vectors while a tuned space is active (one arm of an A/B
            test of ``imgsearch tune``); ``"active"`` or ``None``, the catalogue's active space.

    Raises:
        InvalidQueryError: bad vector, k, price, filters, distance, offset, cursor or search space.
    """
    limit = distance_limit(max_distance)
    # An array says its shape; anything else is looked at as objects (a list of lists, of arrays, ragged).
    several = (vector.ndim if isinstance(vector, np.ndarray) else np.ndim(np.asarray(vector, dtype=object))) == 2
    if several:
        vectors = list(vector)
        if not 1 <= len(vectors) <= MAX_QUERY_VECTORS:
            raise InvalidQueryError(f"give 1 to {MAX_QUERY_VECTORS} query vectors, got {len(vectors)}")
        query_vectors: np.ndarray | list[np.ndarray] = [validate_vector(v) for v in vectors]
    else:
        query_vectors = validate_vector(vector)
    conditions = _filter_params(k, categories, in_stock_only, max_price, exclude_skus, below_price, filters)
    words, weight = _words(text), _text_weight(text_weight)
    settings = _settings(exact, search_space, words if text_filter else None)
    # The functions that take several vectors only (fused words, pages past the 1000th) take one as an array of one.
    vectors = query_vectors if several else [query_vectors]
    if words is not None and not text_filter:
        if below_price is not None:
            raise InvalidQueryError("below_price does not combine with text; use max_price")

        def fused(n: int) -> list[SearchResult]:
            params = {"query": vectors, **conditions, "k": n, "text": words, "text_weight": weight}
            return within(_run(bind, _SIMILAR_WORDS, params, settings), limit)

        return page(fused, k, offset, cursor)

    def ranking(n: int) -> list[SearchResult]:
        params = {"query": query_vectors, **conditions, "k": n}
        return within(_run(bind, _SIMILAR_MULTI if several else _SIMILAR, params, settings), limit)

    def deeper(key: tuple[int, int, float, str], n: int) -> list[SearchResult]:
        params = {"query": vectors, **conditions, "k": n, "after_distance": key[2], "after_sku": key[3]}
        return within(_run(bind, _SIMILAR_AFTER, params, settings), limit)

    return page(ranking, k, offset, cursor, after=None if below_price is not None else deeper)


def set_text_language(bind: Bind, language: str) -> int:
    """Set the language of the catalogue's words (``imgsearch_set_text_language``) and compute them again; the
    number of products whose words changed.

    Raises:
        InvalidQueryError: PostgreSQL has no text search configuration of that name.
    """
    name = _query_text(language, "language")
    with transaction(bind) as conn:
        known = conn.execute(sa.text("SELECT count(*) FROM pg_ts_config WHERE cfgname = :name"), {"name": name})
        if known.scalar_one() != 1:
            raise InvalidQueryError(f"no text search configuration {name[:40]!r} (try english, german, simple)")
        changed = conn.execute(sa.text("SELECT imgsearch_set_text_language(CAST(:name AS regconfig))"), {"name": name})
        return int(changed.scalar_one())


def search_words(
    bind: Bind,
    text: str,
    k: int = 10,
    *,
    categories: Iterable[str] | str | None = None,
    in_stock_only: bool = True,
    max_price: Price | None = None,
    exclude_skus: Iterable[str] | None = None,
    filters: Mapping[str, object] | None = None,
    offset: int = 0,
    cursor: str | None = None,
) -> list[SearchResult]:
    """The ``k`` products whose words best match ``text``, with no photo (``imgsearch_search_words``: names weigh
    most, then categories and text attributes, then descriptions); the filters as :func:`search`. Results have no
    ``distance`` (``None``).

    Raises:
        InvalidQueryError: no words (or only words such as "the"), bad k, price, filters, offset or cursor.
    """
    words = _words(text)
    if words is None:
        raise InvalidQueryError("give the words to search for")
    conditions = _filter_params(k, categories, in_stock_only, max_price, exclude_skus, None, filters)
    conditions.pop("below_price")
    return page(lambda n: _run(bind, _SEARCH_WORDS, {**conditions, "k": n, "text": words}), k, offset, cursor)


def distance_limit(value: object) -> float | None:
    """A ``max_distance``: ``None``, or a number from 0 to 2 (the range of the cosine distance).

    Raises:
        InvalidQueryError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidQueryError(f"max_distance must be a number from 0 to 2, got {value!r}")
    if not 0 <= float(value) <= 2:  # NaN fails this too
        raise InvalidQueryError(f"max_distance must be a number from 0 to 2, got {value!r}")
    return float(value)


def within(results: list[SearchResult], limit: float | None) -> list[SearchResult]:
    """``results`` at most ``limit`` away, in their order; a verified match of the photographed product
    (``match="exact"``) is kept whatever its global distance, since the keypoints proved it."""
    if limit is None:
        return results
    return [r for r in results if (r.distance is not None and r.distance <= limit) or r.match == "exact"]


def _validate_offset(offset: object) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or not 0 <= offset < MAX_K:
        raise InvalidQueryError(f"offset must be an integer from 0 to {MAX_K - 1}, got {offset!r}")
    return int(offset)


def _order(r: SearchResult) -> tuple[int, int, float, str]:
    """Where a result stands in a ranking: verified matches first (most inliers first), then by distance."""
    exact = r.match == "exact"
    distance = 2.0 if r.distance is None else round(r.distance, 9)  # words alone: no distance
    return (0 if exact else 1, -(r.inliers or 0) if exact else 0, distance, r.sku)


def _encode_cursor(r: SearchResult, rank: int) -> str:
    key = _order(r)
    text = json.dumps([rank, key[0], key[1], key[2], key[3]], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: object) -> tuple[int, tuple[int, int, float, str]]:
    problem = InvalidQueryError("cursor is not one a search returned (pass a result's cursor unchanged)")
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 2000:
        raise problem
    try:
        rank, exact, inliers, distance, sku = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise problem from None
    fields = ((rank, int), (exact, int), (inliers, int), (distance, int | float), (sku, str))
    if not all(isinstance(v, t) and not isinstance(v, bool) for v, t in fields) or not 1 <= rank <= MAX_RANK:
        raise problem
    if not 0 <= distance <= 2 or exact not in (0, 1):  # NaN fails too
        raise problem
    return rank, (exact, inliers, float(distance), sku)


def _page_args(offset: object, cursor: object) -> tuple[int, tuple[int, tuple[int, int, float, str]] | None]:
    """The checked ``offset`` and the decoded ``cursor`` (None without one): a search checks them before it
    reads a photo or runs the network."""
    offset = _validate_offset(offset)
    if cursor is None:
        return offset, None
    if offset:
        raise InvalidQueryError("give offset or cursor, not both")
    return offset, _decode_cursor(cursor)


#: Deepest rank a cursor may name (pages past MAX_K go on by cursor; see :func:`page`).
MAX_RANK = 10**9
#: A search's results after a result's key (:func:`_order`), up to the count asked: pages past :data:`MAX_K`.
After = Callable[[tuple[int, int, float, str], int], list[SearchResult]]


def page(
    ranking: Callable[[int], list[SearchResult]],
    k: int,
    offset: int = 0,
    cursor: str | None = None,
    after: After | None = None,
) -> list[SearchResult]:
    """One page of a search: ``k`` results after skipping ``offset``, or after the result whose ``cursor`` is
    given, each with its ``rank`` in the whole ranking and its own ``cursor``. ``ranking(n)`` is the search asked
    for its ``n`` best.

    A cursor names the result it was taken from, so the next page starts right after that product even when
    products were added, removed or re-priced ahead of it since (an offset would shift: repeat or skip results).
    Pages reach down to the :data:`MAX_K`-th result; further by cursor when the search gives ``after`` (the
    results after a key, ranked exactly: vector and SKU searches).

    Raises:
        InvalidQueryError: bad k or offset, both offset and cursor, or a cursor no search returned.
    """
    k = _validate_k(k)
    offset, ahead = _page_args(offset, cursor)
    if ahead is None:
        found, start, before = ranking(min(MAX_K, offset + k)), offset, offset
    elif after is not None and ahead[0] + k > MAX_K:
        # Past the 1000th result: the k after the cursor's product, wherever it now stands.
        before, key = ahead
        return _numbered(after(key, k), before)
    else:
        before, key = ahead
        # Room for products added ahead of the cursor since its page; asked again for more when they were many.
        want = min(MAX_K, before + 2 * k)
        while True:
            found = ranking(want)
            at = next((i for i, r in enumerate(found) if r.sku == key[3]), None)
            # The product the cursor names was removed or moved: continue after every result ranked before it.
            start = at + 1 if at is not None else sum(1 for r in found if _order(r) <= key)
            if len(found) - start >= k or len(found) < want or want == MAX_K:
                break
            want = min(MAX_K, 2 * want)
    return _numbered(found[start : start + min(k, MAX_K - before)], before)


def _numbered(results: list[SearchResult], before: int = 0) -> list[SearchResult]:
    """``results`` with their rank (after ``before`` others) and cursor."""
    return [replace(r, rank=before + i) for i, r in enumerate(results, 1)]


def _filter_params(
    k: int,
    categories: Iterable[str] | str | None,
    in_stock_only: bool,
    max_price: Price | None,
    exclude_skus: Iterable[str] | None,
    below_price: Price | None,
    filters: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The checked ``k`` and filters as the search functions take them (everything but the query vectors)."""
    return {
        "filters": filters_json(filters),
        "k": _validate_k(k),
        "categories": _text_list(categories, "categories"),
        "in_stock_only": bool(in_stock_only),
        "max_price": price_limit(max_price, "max_price"),
        "exclude": _text_list(exclude_skus, "exclude_skus"),
        "below_price": price_limit(below_price, "below_price"),
    }


def search_many(
    bind: Bind,
    vectors: Sequence[Sequence[float]] | np.ndarray,
    k: int = 10,
    *,
    categories: Iterable[str] | str | None = None,
    in_stock_only: bool = True,
    max_price: Price | None = None,
    exclude_skus: Iterable[str] | None = None,
    below_price: Price | None = None,
    filters: Mapping[str, object] | None = None,
    max_distance: float | None = None,
    search_space: str | None = None,
    offset: int = 0,
) -> list[list[SearchResult]]:
    """One search per vector, all in one round trip: ``result[i]`` is :func:`search` of ``vectors[i]`` with the same
    ``k`` and filters (attribute ``filters`` too). For work that asks many questions at once (similar products for
    every product page, an evaluation): it saves each search's round trip and call overhead. ``search_space`` and
    ``offset`` (the same page of every search) as :func:`search`; a cursor belongs to one search, so give it to
    :func:`search`.

    Raises:
        InvalidQueryError: no vectors or more than :data:`MAX_SEARCHES`, a bad vector, k, price, distance, offset
            or search space.
    """
    limit = distance_limit(max_distance)
    rows = list(vectors)
    if not 1 <= len(rows) <= MAX_SEARCHES:
        raise InvalidQueryError(f"give 1 to {MAX_SEARCHES} query vectors, got {len(rows)}")
    k, offset = _validate_k(k), _validate_offset(offset)
    params = {
        "query": [validate_vector(v) for v in rows],
        **_filter_params(
            min(MAX_K, offset + k), categories, in_stock_only, max_price, exclude_skus, below_price, filters
        ),
    }
    answers: list[list[SearchResult]] = [[] for _ in rows]
    for row in _rows(bind, _SIMILAR_MANY, params, _settings(search_space=search_space)):
        answers[row.query_index - 1].append(_result(row))
    return [_numbered(within(answer, limit)[offset : offset + k], offset) for answer in answers]


def similar_to_sku(
    bind: Bind,
    sku: str,
    k: int = 10,
    *,
    categories: Iterable[str] | str | None = None,
    in_stock_only: bool = True,
    max_price: Price | None = None,
    exclude_skus: Iterable[str] | None = None,
    filters: Mapping[str, object] | None = None,
    max_distance: float | None = None,
    offset: int = 0,
    cursor: str | None = None,
    search_space: str | None = None,
) -> list[SearchResult]:
    """Products that look like catalogue product ``sku`` (its stored vector), the product itself excluded, and
    the ``exclude_skus`` too (asked for that many more, then left out: still exactly k whenever k others match);
    ``filters``, ``max_distance``, ``offset``, ``cursor`` and ``search_space`` as :func:`search`.

    Raises:
        UnknownSkuError: ``sku`` is not in the catalogue.
        InvalidQueryError: bad k, price, filters, offset, cursor or search space.
    """
    k, limit = _validate_k(k), distance_limit(max_distance)
    excluded = set(_text_list(exclude_skus, "exclude_skus") or ())
    params = {
        "sku": _query_text(sku, "sku"),
        "categories": _text_list(categories, "categories"),
        "in_stock_only": bool(in_stock_only),
        "max_price": price_limit(max_price, "max_price"),
        "filters": filters_json(filters),
    }
    settings = _settings(search_space=search_space)

    def ranking(n: int) -> list[SearchResult]:
        results = _run(bind, _SIMILAR_TO_SKU, {**params, "k": min(n + len(excluded), MAX_K)}, settings)
        if excluded:
            results = [r for r in results if r.sku not in excluded][:n]
        return within(results, limit)

    def deeper(key: tuple[int, int, float, str], n: int) -> list[SearchResult]:
        asked = {**params, "exclude": [params["sku"], *excluded], "k": n, "after_distance": key[2], "after_sku": key[3]}
        return within(_run(bind, _SIMILAR_TO_SKU_AFTER, asked, settings), limit)

    return page(ranking, k, offset, cursor, after=deeper)


def cheaper_alternatives(
    bind: Bind,
    sku: str,
    k: int = 10,
    *,
    same_category: bool = True,
    filters: Mapping[str, object] | None = None,
    offset: int = 0,
    cursor: str | None = None,
    search_space: str | None = None,
) -> list[SearchResult]:
    """Visually similar products that are in stock and strictly cheaper than ``sku``.

    This answers the shop's complaint: a customer looking at an expensive item should see the near-identical
    cheaper ones. Same category as ``sku`` unless ``same_category`` is false. ``filters``, ``offset``, ``cursor``
    and ``search_space`` as :func:`search`.

    Raises:
        UnknownSkuError: ``sku`` is not in the catalogue.
        InvalidQueryError: ``sku`` has no price, or bad k, filters, offset, cursor or search space.
    """
    params = {"sku": _query_text(sku, "sku"), "same_category": bool(same_category), "filters": filters_json(filters)}
    settings = _settings(search_space=search_space)
    return page(lambda n: _run(bind, _CHEAPER, {**params, "k": n}, settings), k, offset, cursor)


def search_image(
    bind: Bind,
    featurizer: Featurizer,
    image: ImageSource,
    k: int = 10,
    *,
    categories: Iterable[str] | str | None = None,
    in_stock_only: bool = True,
    max_price: Price | None = None,
    exclude_skus: Iterable[str] | None = None,
    filters: Mapping[str, object] | None = None,
    text: str | None = None,
    text_filter: bool = False,
    text_weight: float | None = None,
    crop: Crop | None = None,
    verify: bool = True,
    candidates: int = VERIFY_CANDIDATES,
    max_distance: float | None = None,
    offset: int = 0,
    cursor: str | None = None,
    search_space: str | None = None,
) -> list[SearchResult]:
    """The ``k`` products that look most like a photo (path, bytes or binary file object), best first.

    With ``verify`` (the default) the photo is searched the way a shopper's phone photo needs: the
    ``candidates`` nearest products by the global vector are checked with local features and geometric
    verification (:mod:`imgsearch.local_features`), and the ones the photo provably shows (``match="exact"``)
    come first, most inliers first; the rest follow by distance (``match="similar"``). ``crop`` limits the
    search to a box of the photo (:data:`imgsearch.images.Crop`, pixels of the upright photo). ``offset`` and
    ``cursor`` page through the ranking as :func:`search` does (the photo is described again for every page);
    ``filters``, ``text`` and ``search_space`` as :func:`search`: words that rank (not ``text_filter``) are fused
    with the global vector's ranking, unverified.

    Raises:
        EmbeddingSpaceMismatchError: ``featurizer`` makes vectors unlike the catalogue's (other weights or
            preprocessing), so distances would be meaningless.
        ImageError: the photo cannot be read, or ``crop`` lies outside it.
        InvalidQueryError: bad k, price, filters, crop, candidates, distance, offset, cursor or search space.
    """
    k, crop = _validate_k(k), validate_crop(crop)
    filters_json(filters)
    _words(text), _text_weight(text_weight)
    _settings(search_space=search_space)
    distance_limit(max_distance)  # checked before the photo is read
    _validate_k(candidates, "candidates")
    _page_args(offset, cursor)
    source = read_source(image)
    if not verify or (text is not None and not text_filter):
        check_space(bind, featurizer.space)
        vector = featurizer.embed_image(source, crop=crop)
        return search(
            bind,
            vector,
            k,
            categories=categories,
            in_stock_only=in_stock_only,
            max_price=max_price,
            exclude_skus=exclude_skus,
            filters=filters,
            text=text,
            text_filter=text_filter,
            text_weight=text_weight,
            max_distance=max_distance,
            offset=offset,
            cursor=cursor,
            search_space=search_space,
        )
    # The local features of the photo are computed while the network embeds it (both release the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsearch-features") as pool:
        local = pool.submit(local_features.features_of, source, local_features.QUERY_KEYPOINTS, crop)
        vector = featurizer.embed_image(source, crop=crop)
        query_features = local.result()
    return search_verified(
        bind,
        vector,
        query_features,
        k,
        categories=categories,
        in_stock_only=in_stock_only,
        max_price=max_price,
        exclude_skus=exclude_skus,
        filters=filters,
        text=text,
        candidates=candidates,
        size=photo_size(source) if crop is None else None,
        crop=crop,
        space=featurizer.space,
        max_distance=max_distance,
        offset=offset,
        cursor=cursor,
        search_space=search_space,
    )


#: Photos of one thing a single search may take (front and back, a label, a detail).
MAX_QUERY_PHOTOS = 5


def search_images(
    bind: Bind,
    featurizer: Featurizer,
    images: Sequence[ImageSource],
    k: int = 10,
    *,
    categories: Iterable[str] | str | None = None,
    in_stock_only: bool = True,
    max_price: Price | None = None,
    exclude_skus: Iterable[str] | None = None,
    filters: Mapping[str, object] | None = None,
    text: str | None = None,
    text_filter: bool = False,
    text_weight: float | None = None,
    verify: bool = True,
    candidates: int = VERIFY_CANDIDATES,
    max_distance: float | None = None,
    offset: int = 0,
    cursor: str | None = None,
    search_space: str | None = None,
) -> list[SearchResult]:
    """The ``k`` products that look most like several photos of one thing (up to :data:`MAX_QUERY_PHOTOS`: the
    front and the back, a label): a product's distance is that of its photo closest to any of them. With
    ``verify``, every photo is checked as :func:`search_image` checks one, and a product any of them proves
    (``match="exact"``, its most inliers) comes first; the others follow by that distance as ``"similar"``.
    One photo is :func:`search_image`. ``filters``, ``text``, ``offset``, ``cursor`` and ``search_space`` as
    :func:`search_image`.

    Raises:
        EmbeddingSpaceMismatchError, ImageError, InvalidQueryError: as :func:`search_image`, and for no photo or
            too many.
    """
    if isinstance(images, str | bytes) or not 1 <= len(images) <= MAX_QUERY_PHOTOS:
        count = "a text" if isinstance(images, str | bytes) else len(images)
        raise InvalidQueryError(f"give 1 to {MAX_QUERY_PHOTOS} photos, got {count}")
    k, limit = _validate_k(k), distance_limit(max_distance)
    _validate_k(candidates, "candidates")
    _page_args(offset, cursor)
    _settings(search_space=search_space)
    filters_json(filters)
    _words(text), _text_weight(text_weight)
    fused = text is not None and not text_filter
    conditions = {
        "categories": categories,
        "in_stock_only": in_stock_only,
        "max_price": max_price,
        "exclude_skus": exclude_skus,
        "filters": filters,
        "search_space": search_space,
    }
    sources = [read_source(image) for image in images]
    if len(sources) == 1:
        return search_image(
            bind,
            featurizer,
            sources[0],
            k,
            verify=verify,
            candidates=candidates,
            max_distance=limit,
            offset=offset,
            cursor=cursor,
            text=text,
            text_filter=text_filter,
            text_weight=text_weight,
            **conditions,
        )
    check_space(bind, featurizer.space)
    vectors = [featurizer.embed_image(source) for source in sources]
    if not verify or fused:
        words = {"text": text, "text_filter": text_filter, "text_weight": text_weight}
        return search(
            bind, np.stack(vectors), k, max_distance=limit, offset=offset, cursor=cursor, **conditions, **words
        )
    features = [local_features.features_of(source, local_features.QUERY_KEYPOINTS) for source in sources]
    sizes = [photo_size(source) for source in sources]
    stacked = np.stack(vectors)

    def ranking(n: int) -> list[SearchResult]:
        ranked = search(bind, stacked, n, text=text, text_filter=True, **conditions)
        proven: dict[str, SearchResult] = {}
        inliers: dict[str, int] = {}
        for vector, found_features, size in zip(vectors, features, sizes, strict=True):
            found = search_verified(
                bind, vector, found_features, n, candidates=candidates, size=size, text=text, **conditions
            )
            for r in found:
                inliers[r.sku] = max(inliers.get(r.sku, 0), r.inliers or 0)
                if r.match == "exact" and (r.sku not in proven or (r.inliers or 0) > (proven[r.sku].inliers or 0)):
                    proven[r.sku] = r
        nearest = {r.sku: r.distance for r in ranked}
        exact = [
            replace(r, distance=min(r.distance, nearest.get(r.sku, r.distance)))
            for r in sorted(proven.values(), key=lambda r: -(r.inliers or 0))
        ]
        similar = [replace(r, match="similar", inliers=inliers.get(r.sku, 0)) for r in ranked if r.sku not in proven]
        return within((exact + similar)[:n], limit)

    return page(ranking, k, offset, cursor)


def search_verified(
    bind: Bind,
    vector: Sequence[float] | np.ndarray,
    features: LocalFeatures,
    k: int = 10,
    *,
    categories: Iterable[str] | str | None = None,
    in_stock_only: bool = True,
    max_price: Price | None = None,
    exclude_skus: Iterable[str] | None = None,
    filters: Mapping[str, object] | None = None,
    text: str | None = None,
    candidates: int = VERIFY_CANDIDATES,
    size: tuple[int, int] | None = None,
    crop: Crop | None = None,
    space: SpaceLike | None = None,
    max_distance: float | None = None,
    offset: int = 0,
    cursor: str | None = None,
    search_space: str | None = None,
) -> list[SearchResult]:
    """The search of :func:`search_image` from a photo's vector and local features already computed (a service
    that embeds photos its own way): one round trip for both candidate sources (``imgsearch_photo_candidates``),
    then verification.

    ``size`` (the photo's width and height) or ``crop`` (the box the features were computed on) place the
    matched ``box`` in the photo's pixels. ``space``, the vector's embedding space, is checked against the
    catalogue's in the same round trip. ``filters``, ``offset``, ``cursor`` and ``search_space`` as :func:`search`:
    a page further down verifies that many more candidates; ``text``: only products matching these words.

    Raises:
        InvalidQueryError: bad vector, k, price, filters, candidates, offset, cursor or search space.
        EmbeddingSpaceMismatchError: ``space`` is not the catalogue's.
    """
    query, limit = validate_vector(vector), distance_limit(max_distance)
    _validate_k(k)
    candidates = _validate_k(candidates, "candidates")
    settings = _settings(search_space=search_space, words=text)
    params: dict[str, object] = {
        "query": query,
        "extractor": local_features.EXTRACTOR,
        "word_n": WORD_CANDIDATES,
        "model": space.model_name if space is not None else None,
        "weights_id": space.weights_id if space is not None else None,
        "preprocessing": space.preprocessing_version if space is not None else None,
        "categories": _text_list(categories, "categories"),
        "in_stock_only": bool(in_stock_only),
        "max_price": price_limit(max_price, "max_price"),
        "exclude": _text_list(exclude_skus, "exclude_skus"),
        "filters": filters_json(filters),
    }
    crop = validate_crop(crop)

    def ranking(n: int) -> list[SearchResult]:
        asked = {**params, "k": max(n, candidates)}
        for attempt in range(2):
            # The photo's visual words under the vocabulary last seen active; the database refuses a replaced one.
            asked["vocabulary"], asked["words"] = visual_words.photo_words(bind, features, refresh=attempt > 0)
            try:
                rows = _rows(bind, _PHOTO_CANDIDATES, asked, settings)
                break
            except StaleVocabularyError:
                if attempt:
                    raise
        found = [r for r in rows if r.source == "global"]
        by_words = [r for r in rows if r.source == "words"]
        return within(verified_ranking(found, features, n, size=size, crop=crop, word_rows=by_words), limit)

    return page(ranking, k, offset, cursor)


def verified_ranking(
    rows: Sequence[sa.Row],
    query: LocalFeatures,
    k: int,
    *,
    size: tuple[int, int] | None,
    crop: Crop | None,
    word_rows: Sequence[sa.Row] = (),
) -> list[SearchResult]:
    """Results from ``imgsearch_verification_candidates`` rows (one per candidate photo, by global rank) and
    ``imgsearch_word_candidates`` rows (products proposed by shared visual words, by their own rank): each
    product verified on all its photos; verified matches first (most inliers first), then the global ranking's
    other products in order. A product only the words proposed is shown only if it verifies."""
    products: dict[int, list[sa.Row]] = {}
    for row in rows:
        products.setdefault(row.rank, []).append(row)
    # Word candidates rank after every global one (their distance is real, their rank is not the global one).
    offset = max(products, default=0)
    for row in word_rows:
        products.setdefault(offset + row.rank, []).append(row)
    photos = [(rank, row) for rank, group in products.items() for row in group]
    features = [
        None if row.descriptors is None else LocalFeatures.unpack(row.points, row.descriptors, row.width, row.height)
        for _, row in photos
    ]
    checks = local_features.verify(query, features)
    best: dict[int, local_features.Verification] = {}
    for (rank, _), check in zip(photos, checks, strict=True):
        if rank not in best or check.inliers > best[rank].inliers:
            best[rank] = check
    ranked = sorted(products, key=lambda rank: (0, -best[rank].inliers, rank) if best[rank].exact else (1, 0, rank))
    ranked = [rank for rank in ranked if best[rank].exact or rank <= offset]
    results = []
    for rank in ranked[:k]:
        r, check = products[rank][0], best[rank]
        box = None
        if check.exact and check.box is not None:
            box = local_features.in_original(check.box, query, size or (0, 0), crop)
        results.append(_result(r, match="exact" if check.exact else "similar", inliers=check.inliers, box=box))
    return results
