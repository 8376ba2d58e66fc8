"""API keys of the HTTP service: made, listed and revoked by the catalogue's operators, checked by the service.

A key is 32 random bytes (``isk_`` and 43 URL-safe characters), shown once when it is made; the database keeps its
SHA-256 digest only (a key has the entropy of a random 256-bit secret, so a plain digest cannot be reversed and
lets the service look a key up by its digest). Scopes nest: ``search`` calls the search endpoints, ``write`` also
reports shoppers' events, ``admin`` may do everything. A client sends ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from imgsearch.db import execute_direct, translate_error
from imgsearch.errors import ConfigurationError, InvalidQueryError

#: The scopes, each allowing what the ones before it allow.
SCOPES = ("search", "write", "admin")
KEY_PREFIX = "isk_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")
_KEY = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{43}}")


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never the key itself."""

    name: str
    scope: str
    prefix: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    #: When it stops working by itself (None: never).
    expires_at: datetime | None = None


def allows(scope: str, needed: str) -> bool:
    """Whether a key of ``scope`` may call an endpoint that needs ``needed``."""
    return SCOPES.index(scope) >= SCOPES.index(needed)


def digest(key: str) -> bytes:
    """The SHA-256 digest the database keeps of ``key``."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidQueryError(
            f"a key's name is 1 to 100 letters, digits and . _ @ - (starting with a letter or digit), got {name!r}"
        )
    return name


_COLUMNS = "name, scope, prefix, created_at, revoked_at, expires_at"


def create(engine: Engine, name: str, scope: str, expires_in: timedelta | None = None) -> tuple[ApiKey, str]:
    """Make a key; returns it as listed and the key itself (shown once: only its digest is stored). With
    ``expires_in`` it stops working that long from now (a partner's or a trial's key).

    Raises:
        InvalidQueryError: a bad name, scope or lifetime, or a key of that name exists (revoked ones included).
    """
    _check_name(name)
    if scope not in SCOPES:
        raise InvalidQueryError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if expires_in is not None and not timedelta(minutes=1) <= expires_in <= timedelta(days=3660):
        raise InvalidQueryError(f"a key's lifetime is 1 minute to 10 years, got {expires_in}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    lifetime = None if expires_in is None else expires_in.total_seconds()
    try:
        with engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    "INSERT INTO api_keys (name, scope, key_sha256, prefix, expires_at) "
                    "VALUES (:n, :s, :d, :p, now() + make_interval(secs => CAST(:life AS double precision))) "
                    f"RETURNING {_COLUMNS}"
                ),
                {"n": name, "s": scope, "d": digest(key), "p": key[: len(KEY_PREFIX) + 6], "life": lifetime},
            ).one()
    except IntegrityError:
        raise InvalidQueryError(f"there is already a key named {name!r} (names are never reused)") from None
    except DBAPIError as exc:
        raise translate_error(exc) from None
    return ApiKey(*row), key


def list_keys(engine: Engine) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")).all()
    except DBAPIError as exc:
        raise translate_error(exc) from None
    return [ApiKey(*row) for row in rows]


def revoke(engine: Engine, name: str) -> ApiKey:
    """Revoke the key ``name`` (from the next check on; the service re-reads keys within seconds).

    Raises:
        InvalidQueryError: no such key, or it is revoked already.
    """
    _check_name(name)
    try:
        with engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    "UPDATE api_keys SET revoked_at = now() WHERE name = :n AND revoked_at IS NULL "
                    f"RETURNING {_COLUMNS}"
                ),
                {"n": name},
            ).one_or_none()
    except DBAPIError as exc:
        raise translate_error(exc) from None
    if row is None:
        raise InvalidQueryError(f"no active key named {name!r}")
    return ApiKey(*row)


@dataclass(frozen=True)
class Check:
    """What the service learns from a request's key: the key (``None``: none given, unknown, revoked or expired),
    whether any key is in use (then every request needs one), and whether the key given has expired."""

    key: ApiKey | None
    any_active: bool
    expired: bool = False


_CHECK = sa.text("SELECT name, scope, any_active, expired FROM imgsearch_api_key(:digest)")


def check(engine: Engine, key: str | None) -> Check:
    """Look ``key`` up (one round trip; a malformed key is not even sent)."""
    wanted = digest(key) if key is not None and _KEY.fullmatch(key) else b"\0" * 32
    try:
        rows = execute_direct(engine, _CHECK, {"digest": wanted})
    except DBAPIError as exc:
        raise translate_error(exc) from None
    if not rows:
        raise ConfigurationError("imgsearch_api_key returned nothing: run `imgsearch db upgrade`")
    row = rows[0]
    found = ApiKey(row.name, row.scope, "") if row.name is not None else None
    return Check(found, bool(row.any_active), bool(row.expired))
