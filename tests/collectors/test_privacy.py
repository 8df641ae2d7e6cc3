"""Privacy: masks, keyed hashes, URL and body redaction."""

from __future__ import annotations

import hmac
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors import counters
from collectors.privacy import (
    hash_phone,
    mask_phone,
    normalise_phone,
    phone_attributes,
    pii_key,
    redact_query,
    redact_text,
    redact_url,
)


def test_mask_phone() -> None:
    assert mask_phone("+15551230002") == "+1555***0002"
    assert mask_phone("+1 (555) 123-0002") == "+1555***0002"
    assert mask_phone("+3312345678") == "+33***78"
    assert mask_phone("12345") == "***"
    assert mask_phone("anonymous") == "***"
    assert mask_phone("sip:alice@example.com") == "***"


def test_hash_phone_normalises_before_hashing() -> None:
    key = b"k3y"
    assert normalise_phone("+1 (555) 123-0002") == "+15551230002"
    assert hash_phone("+1 (555) 123-0002", key) == hash_phone("+15551230002", key)
    assert hash_phone("15551230002", "k3y") == hash_phone("+15551230002", key)
    digest = hash_phone("+15551230002", key)
    assert digest.startswith("hmac-sha256:")
    assert len(digest) == len("hmac-sha256:") + 64
    assert hash_phone("+15551230002", b"other") != digest
    # test vector in docs/spans.md: HMAC-SHA256(key="k3y", message="+15551230002")
    assert digest == "hmac-sha256:d7e2bf0f3a76a6bda1393b72f392280fc2cb0cb788c12a30e8fd683e8ff2bea5"


def test_phone_attributes_with_and_without_key() -> None:
    assert phone_attributes("from", "+15551230001", None) == {"minivoice.from.masked": "+1555***0001"}
    with_key = phone_attributes("to", "+15551230002", b"k")
    assert with_key["minivoice.to.masked"] == "+1555***0002"
    assert with_key["minivoice.to.hash"] == hash_phone("+15551230002", b"k")
    assert phone_attributes("to", None, b"k") == {}
    assert phone_attributes("to", "", b"k") == {}


def test_missing_key_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    counters._logged_once.discard(("once", "no-pii-key"))
    with caplog.at_level(logging.WARNING, logger="callscope.collectors"):
        assert pii_key({}) is None
        assert pii_key({}) is None
    assert sum("CALLSCOPE_PII_KEY" in r.getMessage() for r in caplog.records) == 1
    assert pii_key({"CALLSCOPE_PII_KEY": "s3cret"}) == b"s3cret"


def test_redact_url() -> None:
    assert (
        redact_url("wss://user:pw@media.example.com:8443/minivoice?token=abc&call_id=call_123&x=1#frag")
        == "wss://media.example.com:8443/minivoice?token=REDACTED&call_id=call_123&x=REDACTED#REDACTED"
    )
    assert redact_url("wss://media.example.com/minivoice") == "wss://media.example.com/minivoice"
    assert redact_url("https://[::1]:99/x?sig") == "https://[::1]:99/x?REDACTED"
    assert redact_url("https://u@[::1]/x") == "https://[::1]/x"
    assert redact_url("wss://host:notaport/x") == "REDACTED"
    assert redact_query("a=1&&call_id=c&b") == "a=REDACTED&&call_id=c&REDACTED"


def test_redact_text() -> None:
    body = (
        '{"actions":[{"type":"start_stream","stream_url":"wss://u:p@m.example.com/s?token=abc",'
        '"note":"caller +15551230001","escaped":"wss:\\/\\/m.example.com\\/s?key=zzz"}]} '
        "to 555-123-0002"
    )
    redacted = redact_text(body, phone_numbers=["555-123-0002"])
    assert "abc" not in redacted and "zzz" not in redacted and "u:p@" not in redacted
    assert "wss://m.example.com/s?token=REDACTED" in redacted
    assert "wss:\\/\\/m.example.com\\/s?key=REDACTED" in redacted
    assert "5551230001" not in redacted and "+1555***0001" in redacted
    assert "555-123-0002" not in redacted


@given(st.text())
def test_redaction_is_total(text: str) -> None:
    assert isinstance(redact_url(text), str)
    assert isinstance(redact_text(text, [text]), str)
    assert isinstance(mask_phone(text), str)
    assert hash_phone(text, b"k").startswith("hmac-sha256:")


@given(st.integers(min_value=10**10, max_value=10**14))
def test_masked_numbers_never_show_all_digits(number: int) -> None:
    text = f"+{number}"
    masked = mask_phone(text)
    assert str(number) not in masked
    assert masked.count("*") == 3


# The regex-only forms the fast paths (numbers already as `+` and ASCII digits) must agree with.
_PHONE_CHARS = re.compile(r"^\+?[\d\s().\-/]+$")
_NON_DIGITS = re.compile(r"\D")


def reference_normalise(number: str) -> str:
    text = number.strip()
    if _PHONE_CHARS.match(text) and len(_NON_DIGITS.sub("", text)) >= 3:
        return "+" + _NON_DIGITS.sub("", text)
    return text.lower()


def reference_mask(number: str) -> str:
    text = number.strip()
    digits = _NON_DIGITS.sub("", text)
    if not _PHONE_CHARS.match(text) or len(digits) < 8:
        return "***"
    keep = 4 if len(digits) >= 11 else 2
    return ("+" if text.startswith("+") else "") + digits[:keep] + "***" + digits[-keep:]


phone_like = (
    st.integers(min_value=0, max_value=10**16).map(lambda n: f"+{n}")
    | st.text(alphabet="+0123456789 ()-./٣x", max_size=18)
    | st.text(max_size=18)
)


@given(phone_like)
def test_fast_paths_agree_with_the_regexes(number: str) -> None:
    assert normalise_phone(number) == reference_normalise(number)
    assert mask_phone(number) == reference_mask(number)
    digest = hmac.digest(b"k", reference_normalise(number).encode("utf-8"), "sha256").hex()
    assert hash_phone(number, b"k") == "hmac-sha256:" + digest
    assert phone_attributes("to", number, b"k") == (
        {"minivoice.to.masked": reference_mask(number), "minivoice.to.hash": "hmac-sha256:" + digest}
        if number
        else {}
    )


def test_redact_text_reports_the_urls_it_redacted() -> None:
    seen: dict[str, str] = {}
    body = '{"a":"wss://m.example.com/s?token=abc","b":"https:\\/\\/x.example.com\\/p?k=v"}'
    redacted = redact_text(body, ["+15551230002"], redacted_urls=seen)
    assert seen == {
        "wss://m.example.com/s?token=abc": "wss://m.example.com/s?token=REDACTED",
        "https://x.example.com/p?k=v": "https://x.example.com/p?k=REDACTED",
    }
    assert "abc" not in redacted and "k=v" not in redacted
