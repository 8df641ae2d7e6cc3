"""Privacy: phone numbers never leave a collector in clear, secrets in URLs are redacted.

- A phone number becomes a display mask (`+1555***0002`) and, when `CALLSCOPE_PII_KEY` is set,
  a keyed hash (`hmac-sha256:<hex>`) so someone holding the key can search by number.
- A URL keeps its scheme, host, port and path; userinfo is dropped and every query value is
  replaced by `REDACTED`, except `call_id` (an identifier, not a secret, and the join key).

Pure functions; the only environment read is `pii_key()`, done once per collector.
"""

from __future__ import annotations

import functools
import hashlib
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


def _e164_digits(text: str) -> str | None:
    """The digits of `+` followed by ASCII digits only (how MiniVoice sends numbers), else None.

    The common case, read without the regexes: for such a text, `_NON_DIGITS` removes only the
    `+` and `_PHONE_CHARS` matches, so the general paths below give the same results."""
    if text[:1] == "+":
        digits = text[1:]
        if digits.isascii() and digits.isdigit():
            return digits
    return None


def _digits(text: str) -> str:
    fast = _e164_digits(text)
    return fast if fast is not None else _NON_DIGITS.sub("", text)


def normalise_phone(number: str) -> str:
    """E.164-ish form used for hashing: `+` and the digits, so `+1 (555) 123-0002` and
    `+15551230002` hash alike. Values that are not phone numbers (a SIP URI, `anonymous`)
    are kept as they are, stripped and lower-cased."""
    text = number.strip()
    if _e164_digits(text) is not None:
        return text
    if _PHONE_CHARS.match(text) and len(_NON_DIGITS.sub("", text)) >= 3:
        return "+" + _NON_DIGITS.sub("", text)
    return text.lower()


def mask_phone(number: str) -> str:
    """A display mask that hides the middle digits: `+15551230002` -> `+1555***0002`.

    11 digits or more keep the first 4 and last 4; 8 to 10 keep 2 and 2; shorter numbers and
    non-numbers are masked entirely (`***`), since showing part of a short value shows most of it.
    """
    text = number.strip()
    digits = _e164_digits(text)
    if digits is None:
        digits = _NON_DIGITS.sub("", text)
        if not _PHONE_CHARS.match(text):
            return "***"
    if len(digits) < 8:
        return "***"
    keep = 4 if len(digits) >= 11 else 2
    return ("+" if text.startswith("+") else "") + digits[:keep] + "***" + digits[-keep:]


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    # The HMAC state after the key: copying it per number skips setting OpenSSL's HMAC up again.
    return hmac.new(key, digestmod=hashlib.sha256)


def hash_phone(number: str, key: str | bytes) -> str:
    """`hmac-sha256:` + hex HMAC-SHA256 of the normalised number, keyed with `key`."""
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    mac = _keyed(key_bytes).copy()
    mac.update(normalise_phone(number).encode("utf-8"))
    return HASH_PREFIX + mac.hexdigest()


PHONE_CACHE_SIZE = 1024
"""Numbers whose mask and hash are kept for reuse (a service's own number is in every call)."""


@functools.lru_cache(maxsize=PHONE_CACHE_SIZE)
def _phone_facts(text: str, key: bytes | None) -> tuple[str, str | None]:
    # The mask and keyed hash of one number: ~3 us of regexes and HMAC, ~0.2 us from the cache.
    # Bounded, in this process's memory only (which holds the numbers anyway, in the requests).
    return mask_phone(text), (hash_phone(text, key) if key else None)


_PHONE_ATTRIBUTE_NAMES = {
    role: (f"minivoice.{role}.masked", f"minivoice.{role}.hash") for role in ("from", "to")
}


def phone_attributes(role: str, number: object, key: str | bytes | None) -> dict[str, str]:
    """Span attributes for one phone number: `minivoice.<role>.masked` and, with a key, `.hash`.

    `role` is `from` or `to`. A missing or empty number gives no attributes.
    """
    if number is None or number == "":
        return {}
    text = number if isinstance(number, str) else str(number)
    key_bytes = key.encode("utf-8") if isinstance(key, str) else (key or None)
    masked, hashed = _phone_facts(text, key_bytes)
    names = _PHONE_ATTRIBUTE_NAMES.get(role) or (f"minivoice.{role}.masked", f"minivoice.{role}.hash")
    attributes = {names[0]: masked}
    if hashed is not None:
        attributes[names[1]] = hashed
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


def redact_text(
    text: str, phone_numbers: Iterable[str] = (), redacted_urls: dict[str, str] | None = None
) -> str:
    """Redact a bounded text (e.g. a response body already cut to 4 KiB): every URL inside it
    goes through `redact_url`, `+`-prefixed international numbers and the given known numbers
    (the call's `from`/`to`, in any formatting) are masked.

    `redacted_urls`, when given, receives each URL found (unescaped) and its redaction, so a
    caller that redacts the same URL again (the `stream_url` attribute) need not redo it."""

    def _url(match: re.Match[str]) -> str:
        found = match.group(0)
        escaped = "\\/" in found
        unescaped = found.replace("\\/", "/") if escaped else found
        redacted = redact_url(unescaped)
        if redacted_urls is not None:
            redacted_urls[unescaped] = redacted
        return redacted.replace("/", "\\/") if escaped else redacted

    # The fast checks skip the regexes for the common body that has nothing to redact.
    if "://" in text or ":\\/\\/" in text:
        text = _URL_IN_TEXT.sub(_url, text)
    for number in phone_numbers:
        if not number:
            continue
        digits = _digits(number)
        if len(digits) >= 3 and number in text:
            text = text.replace(number, mask_phone(number))
        if len(digits) >= 6 and digits in text:
            text = text.replace(digits, mask_phone(digits))
    if "+" in text:
        text = _E164_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)
    return text
