"""Database URLs in the forms their users need: SQLAlchemy's (psycopg 3), libpq's (psql, other languages), and
with the password masked (messages, listings)."""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from imgsearch.errors import ConfigurationError

# user:password@ after the scheme; greedy up to the last "@", so that a malformed URL with an unescaped "@" in
# its password is masked whole.
_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^:/@\s]*:)(?P<password>\S*)(?P<tail>@)")


def mask_password(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***`` (for messages and listings)."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", text)


def normalise_url(url: str) -> str:
    """Accept libpq-style ``postgresql://`` URLs and point SQLAlchemy at psycopg 3."""
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"invalid database URL {mask_password(url)!r}: {mask_password(str(exc))}") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"imgsearch needs PostgreSQL with pgvector, not {parsed.get_backend_name()!r}")
    if port is not None and not 0 < port < 65536:
        raise ConfigurationError(f"invalid database URL {mask_password(url)!r}: port {port} is out of range")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str, *, show_password: bool = False) -> str:
    """``url`` as libpq writes it (for psql and non-Python backends): no driver name, socket paths unescaped.

    The password is shown as ``***`` unless ``show_password``.
    """
    parsed = make_url(normalise_url(url))
    auth = ""
    if parsed.username:
        auth = quote(parsed.username, safe="")
        if parsed.password:
            auth += ":" + (quote(str(parsed.password), safe="") if show_password else "***")
        auth += "@"
    location = parsed.host or ""
    if parsed.port:
        location += f":{parsed.port}"
    query = "&".join(
        f"{key}={value}"
        for key, values in parsed.query.items()
        for value in ([values] if isinstance(values, str) else values)
    )
    return f"postgresql://{auth}{location}/{parsed.database or ''}" + (f"?{query}" if query else "")


def sqlalchemy_url(url: str, *, show_password: bool = False) -> str:
    """``url`` in SQLAlchemy's form (``postgresql+psycopg://``), the password masked unless ``show_password``."""
    return make_url(normalise_url(url)).render_as_string(hide_password=not show_password)
