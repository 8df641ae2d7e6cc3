"""Privacy: phone numbers never leave a collector in clear, secrets in URLs are redacted.

- A phone number becomes a display mask (`+1555***0002`) and, when `CALLSCOPE_PII_KEY` is set,
  a keyed hash (`hmac-sha256:<hex>`) so someone holding the key can search by number.
- A URL keeps its scheme, host, port and path; userinfo is dropped and every query value is
  replaced by `REDACTED`, except `call_id` (an identifier, not a secret, and the join key).

Pure functions; the only environment read is `pii_key()`, done once per collector.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from collectors import counters

CALLSCOPE_PII_KEY = "CALLSCOPE_PII_KEY"
"""Key for the HMAC-SHA256 of phone numbers. Without it only the mask is exported (warned once)."""

REDACTED = "REDACTED"
KEPT_QUERY_KEYS = frozenset({"call_id"})
HASH_PREFIX = "hmac-sha256:"

_PHONE_CHARS = re.compile(r"^\+?[\d\s().\-/]+$")
_NON_DIGITS = re.compile(r"\D")
# A scheme, then :// (or the JSON-escaped :\/\/), then anything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?://|\\/\\/)[^\s\"'<>]+")
# International numbers as they appear in bodies: +, then 8..15 digits.
_E164_IN_TEXT = re.compile(r"\+\d{8,15}\b")


def normalise_phone(number: str) -> str:
    """E.164-ish form used for hashing: `+` and the digits, so `+1 (555) 123-0002` and
    `+15551230002` hash alike. Values that are not phone numbers (a SIP URI, `anonymous`)
    are kept as they are, stripped and lower-cased."""
    text = number.strip()
    if _PHONE_CHARS.match(text) and len(_NON_DIGITS.sub("", text)) >= 3:
        return "+" + _NON_DIGITS.sub("", text)
    return text.lower()


def mask_phone(number: str) -> str:
    """A display mask that hides the middle digits: `+15551230002` -> `+1555***0002`.

    11 digits or more keep the first 4 and last 4; 8 to 10 keep 2 and 2; shorter numbers and
    non-numbers are masked entirely (`***`), since showing part of a short value shows most of it.
    """
    text = number.strip()
    digits = _NON_DIGITS.sub("", text)
    if not _PHONE_CHARS.match(text) or len(digits) < 8:
        return "***"
    keep = 4 if len(digits) >= 11 else 2
    return ("+" if text.startswith("+") else "") + digits[:keep] + "***" + digits[-keep:]


def hash_phone(number: str, key: str | bytes) -> str:
    """`hmac-sha256:` + hex HMAC-SHA256 of the normalised number, keyed with `key`."""
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    digest = hmac.digest(key_bytes, normalise_phone(number).encode("utf-8"), "sha256")
    return HASH_PREFIX + digest.hex()


def phone_attributes(role: str, number: object, key: str | bytes | None) -> dict[str, str]:
    """Span attributes for one phone number: `minivoice.<role>.masked` and, with a key, `.hash`.

    `role` is `from` or `to`. A missing or empty number gives no attributes.
    """
    if number is None or number == "":
        return {}
    text = number if isinstance(number, str) else str(number)
    attributes = {f"minivoice.{role}.masked": mask_phone(text)}
    if key:
        attributes[f"minivoice.{role}.hash"] = hash_phone(text, key)
    return attributes


def pii_key(environ: Mapping[str, str] | None = None, *, warn: bool = True) -> bytes | None:
    """The phone-number hashing key from CALLSCOPE_PII_KEY, or None (with `warn`, logged once per
    process: without it numbers are exported only as masks and cannot be searched)."""
    env = os.environ if environ is None else environ
    raw = env.get(CALLSCOPE_PII_KEY)
    if raw:
        return raw.encode("utf-8")
    if warn:
        counters.log_once(
            "no-pii-key",
            "callscope: %s is not set; phone numbers are exported only as masks and cannot be "
            "searched by number. Set it to the same secret on every collector.",
            CALLSCOPE_PII_KEY,
        )
    return None


def redact_query(query: str) -> str:
    """Every query value replaced by REDACTED, except `call_id`; keys kept as sent.

    A bare item with no `=` could itself be a token, so it is redacted too.
    """
    if not query:
        return query
    parts = []
    for item in query.split("&"):
        name, sep, _value = item.partition("=")
        if not sep:
            parts.append(REDACTED if item else item)
        elif name in KEPT_QUERY_KEYS:
            parts.append(item)
        else:
            parts.append(f"{name}={REDACTED}")
    return "&".join(parts)


def redact_url(url: str) -> str:
    """The URL with userinfo dropped, query values REDACTED (except `call_id`) and any fragment
    REDACTED. Something that cannot be parsed as a URL is replaced by REDACTED entirely."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, redact_query(parts.query), fragment))


def redact_text(text: str, phone_numbers: Iterable[str] = ()) -> str:
    """Redact a bounded text (e.g. a response body already cut to 4 KiB): every URL inside it
    goes through `redact_url`, `+`-prefixed international numbers and the given known numbers
    (the call's `from`/`to`, in any formatting) are masked."""

    def _url(match: re.Match[str]) -> str:
        found = match.group(0)
        escaped = "\\/" in found
        redacted = redact_url(found.replace("\\/", "/"))
        return redacted.replace("/", "\\/") if escaped else redacted

    # The fast checks skip the regexes for the common body that has nothing to redact.
    if "://" in text or ":\\/\\/" in text:
        text = _URL_IN_TEXT.sub(_url, text)
    for number in phone_numbers:
        if number and number in text and len(_NON_DIGITS.sub("", number)) >= 3:
            text = text.replace(number, mask_phone(number))
        digits = _NON_DIGITS.sub("", number) if number else ""
        if len(digits) >= 6 and digits in text:
            text = text.replace(digits, mask_phone(digits))
    if "+" in text:
        text = _E164_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)
    return text
