"""Keep passwords out of output: storage and tracking URIs are redacted before they reach
a console line, an error message, an MLflow param or tag, or a report.

    >>> redact("cannot reach postgresql://tuner:s3cret@db.internal:5432/optuna")
    'cannot reach postgresql://tuner:***@db.internal:5432/optuna'
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host: the password runs, quotes and spaces included, to the first
# "@" on the line that is followed by a host name and the end of the host part; an "@"
# inside a password is taken as part of it, and at worst part of the host is masked too.
_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*):(?P<password>[^\n]*?)@"
    r"(?=[\w.\-\[\]%]+(?:[:/?#\s'\"]|$))"
)
# `password=...` as a URL query parameter or a libpq keyword, bare or quoted.
_QUERY = re.compile(
    # a quoted value runs to its closing quote (\' escapes one), or to the line's end if none
    r"(?P<head>(?:[?&]|\b)(?:password|passwd|pwd)\s*=\s*)"
    r"(?P<password>'(?:[^'\\\n]|\\.)*'?|\"[^\"\n]*\"?|[^&\s'\"]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every password in a URL (userinfo or `password=` query) replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
