"""Property tests: redaction never raises, and what it outputs re-scans clean."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redaction_helpers import event, run

from pipeline_svc.processors.redaction.scanner import (
    SHORT_DIGITS_MAX,
    CustomPattern,
    DetectorSettings,
)

FULL = DetectorSettings(mask_ip_addresses=True, mask_mac_addresses=True).build()
DEFAULT = DetectorSettings().build()

FRAGMENTS = [
    "4111 1111 1111 1111", "5555-5555-5555-4444", "123-45-6789", "912-70-1234",
    "jane.doe@example.com", "+1 415-555-0132", "(212) 555-0199", "DE89370400440532013000",
    "10.0.0.1", "2001:db8::1", "00:1a:2b:3c:4d:5e", "AKIAIOSFODNN7EXAMPLE",
    "ghp_R2d9kFq8Lm3Zx7Vb1Nc5Tg0Hy4Uj6Ws2Ea8Q", "xoxb-123456789012-abcdefghij",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "Authorization: Bearer abc123DEF456ghi789", "Basic dXNlcjpwYXNz", "password=", "token: ",
    "https://u:p@h", "Server=a;Pwd=b;", "-----BEGIN PRIVATE KEY-----", "[REDACTED:card]",
    "blk_-6952295868487656571", "1117838570", " ", "=", ":", "@", ";", "-", ".", "\n",
]  # fmt: skip
glued = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=12).map(
    "".join
)
texts = st.one_of(st.text(max_size=300), glued)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_masking_never_raises_and_its_output_rescans_clean(text: str) -> None:
    for scanner in (DEFAULT, FULL):
        counts: dict[str, int] = {}
        masked = scanner.mask(text, counts, cache=False)
        assert scanner.find(masked, cache=False) == frozenset()
        assert all(count > 0 for count in counts.values())


@settings(max_examples=200, deadline=None)
@given(texts)
def test_finding_nothing_means_masking_changes_nothing(text: str) -> None:
    if not DEFAULT.find(text, cache=False):
        assert DEFAULT.mask(text, {}, cache=False) == text


NEVER = CustomPattern(name="never", pattern="(?!)")  # any custom detector turns the shortcut off
FULL_WITHOUT_SHORTCUT = DetectorSettings(
    mask_ip_addresses=True, mask_mac_addresses=True, custom=[NEVER]
).build()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=SHORT_DIGITS_MAX))
def test_short_digit_values_skip_the_detectors_and_none_of_them_would_find_anything(
    digits: str,
) -> None:
    assert FULL_WITHOUT_SHORTCUT.find(digits, cache=False) == frozenset()
    counts: dict[str, int] = {}
    assert FULL_WITHOUT_SHORTCUT.mask(digits, counts, cache=False) == digits
    assert counts == {}
    assert FULL.find(digits) == frozenset()


async def test_a_custom_pattern_still_sees_values_of_digits_alone() -> None:
    source = event("badge used", attributes={"badge.id": "123456", "syslog.pid": "4242"})
    custom = [{"name": "badge", "pattern": r"^\d{6}$"}]
    result = await run([source], [{"type": "mask_patterns", "custom": custom}])
    assert result.events[0].attributes["badge.id"] == "[REDACTED:badge]"
    assert result.events[0].attributes["syslog.pid"] == "4242"
