"""Keep passwords out of output: storage and tracking URIs are redacted before they reach
a console line, an error message, an MLflow param or tag, or a report.

    >>> redact("cannot reach postgresql://tuner:s3cret@db.internal:5432/optuna")
    'cannot reach postgresql://tuner:***@db.internal:5432/optuna'
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host: the password runs to the last "@" of the URL (an unescaped
# "@" inside a password is redacted too, at worst with part of the host).
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*):(?P<password>[^\s'\"]*)@")
# libpq-style `?password=...` / `&password=...` query parameters.
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<password>[^&\s'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password in a URL (userinfo or `password=` query) replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
