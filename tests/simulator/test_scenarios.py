"""The scenario registry: every issue-5 scenario, with its ground-truth verdict, and the demo mix."""

from __future__ import annotations

from collections import Counter

import pytest

from simulator.audio import FRAME_BYTES, mulaw_byte, tone_payloads
from simulator.messages import iso_utc
from simulator.scenarios import SCENARIOS, UnknownScenario, demo_mix, get_scenario

ISSUE_5 = {
    "happy": "ok",
    "no_stream_requested": "no_stream",
    "answer_url_500": "answer_url_failed",
    "answer_url_timeout": "answer_url_failed",
    "answer_url_not_json": "answer_url_failed",
    "invalid_scheme": "invalid_action",
    "invalid_track": "invalid_action",
    "receiver_down": "stream_not_connected",
    "tls_failure": "stream_not_connected",
    "handshake_rejected": "stream_not_connected",
    "no_media": "no_media",
    "receiver_closes_early": "stream_dropped",
    "network_drop": "stream_dropped",
    "webhook_lost": "webhook_missing",
    "duplicate_webhooks": "ok",
    "out_of_order_webhooks": "ok",
    "busy": "call_failed",
    "no_answer": "call_failed",
    "skewed_receiver_clock": "ok",
}


def test_every_issue_scenario_has_its_verdict() -> None:
    assert {name: s.expected_verdict for name, s in SCENARIOS.items() if name in ISSUE_5} == ISSUE_5
    assert set(ISSUE_5) <= set(SCENARIOS)
    for scenario in SCENARIOS.values():
        assert scenario.injected_by in ("none", "platform", "customer")
        assert scenario.description.endswith(".")


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(UnknownScenario, match="unknown scenario 'nope'; known: happy, "):
        get_scenario("nope")


@pytest.mark.parametrize("calls", [1, 5, 19, 20, 200, 1000])
def test_demo_mix_is_mostly_happy_with_every_scenario(calls: int) -> None:
    mix = demo_mix(calls)
    assert len(mix) == calls
    counts = Counter(s.name for s in mix)
    assert mix[0].name == "happy"
    if calls >= len(SCENARIOS):
        assert set(counts) == set(SCENARIOS)
        assert counts["happy"] == calls - len(SCENARIOS) + 1
    if calls >= 200:
        assert counts["happy"] / calls > 0.9


def test_mulaw_tone_frames() -> None:
    payloads = tone_payloads()
    assert len(payloads) == 50
    assert {len(p) for p in payloads} == {216}  # base64 of 160 bytes
    assert FRAME_BYTES == 160
    # G.711 reference points: silence, full scale positive and negative.
    assert (mulaw_byte(0), mulaw_byte(32767), mulaw_byte(-32768)) == (0xFF, 0x80, 0x00)


def test_created_at_has_milliseconds() -> None:
    assert iso_utc(1_780_056_600_123_456_789) == "2026-05-29T12:10:00.123Z"
