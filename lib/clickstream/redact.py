"""Credentials out of everything the course prints, logs and stores.

A store URL may carry a password (`redis://:pw@host:6379/0`, `postgresql://user:pw@host/db`,
`?password=pw`): it is needed to connect, and nowhere else. Messages show `redact_url(url)`,
the checkpoint keeps `without_credentials(url)`, and a library's error text goes through
`redact_text(text, url)` before it is shown.

(Not `secrets.py`: a module of that name would stand in for the standard library's `secrets`
wherever its directory comes first on `sys.path`.)
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit

MASK = "***"

# Query parameters that hold a secret (libpq's `password` and `sslpassword`, redis-py's
# `password`, tokens and keys of other services), as Spark's `spark.redaction.regex` finds them.
SECRET_PARAMETER = re.compile(r"(?i)secret|passw(or)?d|pwd|token|access[._-]?key")


def redact_url(url: str) -> str:
    """The URL with its password and secret query parameters shown as `***` (user kept)."""
    return _rewrite(url, mask=True)


def without_credentials(url: str) -> str:
    """The URL without user, password or secret query parameters: which store it names,
    whatever the login (a checkpoint's identity)."""
    return _rewrite(url, mask=False)


def redact_text(text: str, url: str) -> str:
    """`text` (a library's error message, say) with every secret of `url` replaced by `***`."""
    text = text.replace(url, redact_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


# user:password@ whose password holds an unencoded '/', '?' or '#': urlsplit (and the clients)
# end the host there and read the rest of the password as path, query or fragment.
_SPILLED = re.compile(
    r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@]*):(?P<password>(?!\d+(?:[/?#]|$))[^@]*)@"
)


def _rewrite(url: str, mask: bool) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed '[' (IPv6 host): nothing in it can be told apart
        scheme, slashes, _ = url.partition("://")
        return f"{scheme}://{MASK}" if slashes else MASK
    spilled = _SPILLED.match(url)
    if spilled and "@" not in parts.netloc:
        login = f"{spilled['user']}:{MASK}@" if mask else ""
        return _rewrite(spilled["head"] + login + url[spilled.end() :], mask)
    netloc = _netloc(parts, mask)
    query = _query(parts.query, mask)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret: the URL exactly as given
    # Put together by hand: urlunsplit drops or adds slashes around an empty host
    # (sqlite:////absolute/path.db, unix:///path.sock).
    rest = url.strip().partition(":")[2] if parts.scheme else url.strip()
    text = f"{parts.scheme}:" if parts.scheme else ""
    text += f"//{netloc}" if rest.startswith("//") else ""
    text += parts.path
    text += f"?{query}" if query else ""
    return text + (f"#{parts.fragment}" if parts.fragment else "")


def _netloc(parts: SplitResult, mask: bool) -> str:
    # As urlsplit reads it (and redis-py, which uses it): user info ends at the last '@'.
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return parts.netloc
    if not mask:
        return hostport
    user, _, password = userinfo.partition(":")
    return f"{user}:{MASK}@{hostport}" if password else parts.netloc


def _query(query: str, mask: bool) -> str:
    if not query:
        return query
    kept = []
    for item in query.split("&"):
        name = item.partition("=")[0]
        if not SECRET_PARAMETER.search(unquote_plus(name)):
            kept.append(item)
        elif mask:
            kept.append(f"{name}={MASK}")
    return "&".join(kept)


def _secrets(url: str) -> set[str]:
    """The URL's secret values, as written and decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    found = set()
    spilled = _SPILLED.match(url)
    if spilled and "@" not in parts.netloc:
        found |= {spilled["password"], unquote(spilled["password"])}
    if parts.password:
        found |= {parts.password, unquote(parts.password)}
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if value and SECRET_PARAMETER.search(unquote_plus(name)):
            found |= {value, unquote_plus(value)}
    return {s for s in found if s}
