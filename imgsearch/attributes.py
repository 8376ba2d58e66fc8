"""The shop's own attributes of its products (brand, size, colour, a rating...), and the filters on them.

A product's attributes are a JSON object of text, numbers, booleans and lists of text, stored in
``products.attributes`` (revision 0018) and shown in every result. A manifest's extra columns are attributes; in
a cell, ``true``/``false`` is a boolean, a plain number (``42``, ``4.5``; not ``007``) a number, ``S|M|L`` a list
of text, and anything else text; an empty cell means the product has no such attribute.

Filters, the same everywhere a search is made (Python ``filters=``, HTTP ``where``, the SQL functions' ``filters``
argument), are a JSON object; every key must hold::

    {"brand": "Acme"}                    equal (a list attribute: one of its items)
    {"brand": ["Acme", "Zenith"]}        any of
    {"rating": {">=": 4, "<=": 5}}       numeric range (">=", "<=", ">", "<")
    {"size": {"has": true}}              has the attribute (false: has not)

The SQL function ``imgsearch_attribute_filter`` is their one definition (it turns them into the jsonpath a
product must match); :func:`parse_where` reads the CLI's ``--where`` into them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal

from imgsearch.errors import InvalidProductError, InvalidQueryError
from imgsearch.validation import text_problem

#: A value of an attribute: text, a number, a boolean or a list of text.
AttributeValue = str | int | float | bool | list[str]
#: Most attributes one product has.
MAX_ATTRIBUTES = 100
#: Longest attribute name, and longest text (or item of a list).
NAME_MAX_LENGTH = 64
VALUE_MAX_LENGTH = 1000
#: Most items of a list attribute, and most values of an any-of filter.
MAX_ITEMS = 100
#: Most attribute filters in one search.
MAX_FILTERS = 32
#: What separates the items of a list attribute in a manifest cell, and the values of an any-of ``--where``.
LIST_SEPARATOR = "|"
#: Cells that read as booleans.
_BOOLEANS = {"true": True, "false": False}
#: A number as a cell or a ``--where`` writes it (no leading zeros, so that codes such as ``007`` stay text).
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", re.ASCII)
#: ``--where`` conditions: KEY>=N, KEY<=N, KEY>N, KEY<N, KEY=VALUE (A|B any of), KEY (has it), !KEY (has not).
_WHERE = re.compile(r"(?P<key>[^<>=!]+?)\s*(?P<op>>=|<=|>|<|=)(?P<value>.*)", re.DOTALL)


def check_name(name: object, what: str = "an attribute name") -> str:
    """``name`` if it can name an attribute: text of 1 to 64 characters, no control characters.

    Raises:
        InvalidQueryError: anything else.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX_LENGTH:
        raise InvalidQueryError(f"{what} must be 1 to {NAME_MAX_LENGTH} characters, got {str(name)[:70]!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or text_problem(name):
        raise InvalidQueryError(f"{what} must not hold control characters or invalid text, got {name[:70]!r}")
    return name


def _check_text(value: str, name: str) -> str:
    if len(value) > VALUE_MAX_LENGTH:
        raise InvalidQueryError(f"attribute {name!r} is longer than {VALUE_MAX_LENGTH} characters")
    if problem := text_problem(value):
        raise InvalidQueryError(f"attribute {name!r} {problem}")
    return value


def check_attributes(attributes: object) -> dict[str, AttributeValue] | None:
    """``attributes`` as they are stored (a JSON-ready dict), or ``None`` (keep what is stored).

    Raises:
        InvalidProductError: not a mapping of at most 100 names to text, finite numbers, booleans or lists of text.
    """
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise InvalidProductError(f"attributes must be a mapping of names to values, got {type(attributes).__name__}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidProductError(f"at most {MAX_ATTRIBUTES} attributes per product, got {len(attributes)}")
    stored: dict[str, AttributeValue] = {}
    try:
        for name, value in attributes.items():
            check_name(name)
            stored[name] = _stored_value(name, value)
    except InvalidQueryError as exc:
        raise InvalidProductError(str(exc)) from None
    return stored


def _stored_value(name: str, value: object) -> AttributeValue:
    if isinstance(value, bool | str):
        return _check_text(value, name) if isinstance(value, str) else value
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            finite = math.isfinite(value) and abs(value) < 1e300
        except (OverflowError, ValueError):  # an int too large for a float, a signalling NaN
            finite = False
        if not finite:
            raise InvalidQueryError(f"attribute {name!r} must be a finite number, got {str(value)[:40]}")
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        return value
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        if len(value) > MAX_ITEMS:
            raise InvalidQueryError(f"attribute {name!r} has more than {MAX_ITEMS} items")
        return [_check_text(item, name) for item in value]
    raise InvalidQueryError(
        f"attribute {name!r} must be text, a number, true/false or a list of text, got {type(value).__name__}"
    )


def parse_cell(cell: str, name: str) -> AttributeValue | None:
    """A manifest cell as an attribute value (see the module's description), ``None`` for an empty one.

    Raises:
        ValueError: the cell is too long or holds invalid text.
    """
    text = cell.strip()
    if not text:
        return None
    try:
        if text.lower() in _BOOLEANS:
            return _BOOLEANS[text.lower()]
        if len(text) <= 30 and _NUMBER.fullmatch(text):  # longer digit strings (codes) stay text
            number = Decimal(text)
            return int(number) if number == number.to_integral_value() and "." not in text else float(number)
        if LIST_SEPARATOR in text:
            items = [item.strip() for item in text.split(LIST_SEPARATOR) if item.strip()]
            return _stored_value(name, items)
        return _check_text(text, name)
    except InvalidQueryError as exc:
        raise ValueError(str(exc)) from None


def attribute_columns(header: Iterable[str], known: Iterable[str]) -> tuple[list[str], list[str]]:
    """The columns of a manifest's header that are attributes (all but ``known``), and those that cannot name one
    (empty, too long: left out, with a warning by the caller).

    Raises:
        ValueError: there are more than 100.
    """
    skip = set(known)
    usable, unusable = [], []
    for column in header:
        if column in skip:
            continue
        try:
            usable.append(check_name(column))
        except InvalidQueryError:
            unusable.append(column)
    if len(usable) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attribute columns, got {len(usable)}")
    return usable, unusable


def filters_json(filters: object) -> str | None:
    """``filters`` as the search functions take them (JSON text), or ``None`` for no filter. Their grammar is
    checked where it is defined, by the database (``imgsearch_attribute_filter``); here only what JSON cannot
    carry.

    Raises:
        InvalidQueryError: not a mapping of attribute names to JSON values.
    """
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise InvalidQueryError(f"filters must be a mapping of attribute names to conditions, got {filters!r:.60}")
    if not filters:
        return None
    if len(filters) > MAX_FILTERS:
        raise InvalidQueryError(f"at most {MAX_FILTERS} attribute filters in one search, got {len(filters)}")
    for name in filters:
        check_name(name, "a filter's attribute name")
    try:
        text = json.dumps(filters, allow_nan=False, default=_json_number, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidQueryError(f"filters must hold text, numbers, true/false, lists and objects: {exc}") from None
    # Every text in them as PostgreSQL can hold it (JSON would carry a NUL escaped, which jsonb refuses).
    pending: list[object] = [filters]
    while pending:
        item = pending.pop()
        if isinstance(item, Mapping):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            pending += item
        elif isinstance(item, str) and (problem := text_problem(item)):
            raise InvalidQueryError(f"filters: a text {problem}")
    return text


def _json_number(value: object) -> object:
    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def parse_where(conditions: Iterable[str]) -> dict[str, object] | None:
    """The filters that ``--where`` conditions say (all must hold), or ``None`` for none.

    ``KEY=VALUE`` (``KEY=A|B``: any of), ``KEY>=N``, ``KEY<=N``, ``KEY>N``, ``KEY<N``, ``KEY`` (has it) and
    ``!KEY`` (has it not); a key may take several ranges (``rating>=3`` and ``rating<5``).

    Raises:
        InvalidQueryError: a condition that says none of these, or says one key's equality twice.
    """
    filters: dict[str, object] = {}
    for condition in conditions:
        match = _WHERE.fullmatch(condition.strip())
        if match is None:
            name = condition.strip().removeprefix("!")
            if any(c in name for c in "<>=!"):
                raise InvalidQueryError(
                    f"{condition!r:.60}: write KEY=VALUE, KEY>=N, KEY<=N, KEY>N, KEY<N, KEY or !KEY"
                )
            check_name(name.strip(), f"{condition!r:.60}: the attribute")
            ranges = filters.setdefault(name.strip(), {})
            if not isinstance(ranges, dict) or "has" in ranges:
                raise InvalidQueryError(f"{name.strip()!r} is given twice")
            ranges["has"] = not condition.strip().startswith("!")
            continue
        key, op, value = match["key"].strip(), match["op"], match["value"].strip()
        check_name(key, f"{condition!r:.60}: the attribute")
        if op == "=":
            values = [v.strip() for v in value.split(LIST_SEPARATOR)]
            if value[:1] in ("=", "<", ">"):  # KEY==A, KEY=>N: a mistyped operator, not a value
                raise InvalidQueryError(f"{condition!r:.60}: write KEY=VALUE, KEY>=N or KEY<=N")
            if not all(values):
                raise InvalidQueryError(f"{condition!r:.60}: give a value after = (A|B for any of)")
            if key in filters:
                raise InvalidQueryError(f"{key!r} is given twice (A|B gives any of several values)")
            filters[key] = values[0] if len(values) == 1 else values
            continue
        if not _NUMBER.fullmatch(value):
            raise InvalidQueryError(f"{condition!r:.60}: {op} takes a number")
        ranges = filters.setdefault(key, {})
        if not isinstance(ranges, dict):
            raise InvalidQueryError(f"{key!r} is given both a value and a range")
        if op in ranges:
            raise InvalidQueryError(f"{key}{op} is given twice")
        number = Decimal(value)
        ranges[op] = int(number) if number == number.to_integral_value() and "." not in value else float(number)
    return filters or None


def attributes_text(attributes: Mapping[str, object]) -> str:
    """Attributes as one line (``brand=Acme size=S|M``): the CLI's table."""
    parts = []
    for name, value in attributes.items():
        if isinstance(value, list):
            shown = LIST_SEPARATOR.join(value)
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        parts.append(f"{name}={shown}")
    return " ".join(parts)
