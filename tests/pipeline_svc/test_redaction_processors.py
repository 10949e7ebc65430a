"""DropFields, HashFields, SafetyValidator, counts, limits and the redaction-first order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redaction_helpers import event, pipeline, run

from mesh.config import ConfigError
from pipeline_svc.processors.redaction.hash_fields import normalise

SECRET = "a-test-secret-of-32-bytes-length"


async def test_dropped_fields_are_gone_at_any_depth_and_case() -> None:
    attributes = {
        "http.headers.Authorization": "Bearer x",
        "db.password": "hunter2",
        "Password": "p",
        "app.config.API-Key": "k",
        "request.cookie": "sid=1",
        "user": "bob",
        "net.src_ip": "10.0.0.1",
        "auth.method": "publickey",
    }
    source = event("ok", attributes=attributes, tags={"session": "s", "team": "net"})
    result = await run([source], [{"type": "drop_fields", "keep": ["auth.method"]}])
    kept = result.events[0]
    assert sorted(kept.attributes) == ["auth.method", "net.src_ip", "user"]
    assert sorted(kept.tags) == ["redaction.dropped", "team"]
    assert kept.tags["redaction.dropped"] == "6"


async def test_drop_fields_globs_extra_names_and_raw() -> None:
    source = event(
        "ok",
        attributes={"vendor.x.pin": "1234", "vendor.x.model": "m", "otp": "1"},
        raw=b"<13>password=hunter2",
    )
    settings = {"type": "drop_fields", "globs": ["vendor.*.pin"], "extra_names": ["otp"]}
    kept = (await run([source], [settings])).events[0]
    assert dict(kept.attributes) == {"vendor.x.model": "m"}
    assert not kept.HasField("raw")


def hashing(**settings: Any) -> dict[str, Any]:
    return {"type": "hash_fields", "secret_env": "TEST_HASH_SECRET", **settings}


async def test_hashing_is_stable_keyed_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HASH_SECRET", SECRET)
    first = event(
        "Accepted password for bob from 10.0.0.7 port 22",
        attributes={"user": "bob", "net.src_ip": "10.0.0.7"},
    )
    again = event("x", attributes={"user": " bob ", "net.src_ip": "10.0.0.7"})
    one = (await run([first, again], [hashing()])).events
    user, ip = one[0].attributes["user"], one[0].attributes["net.src_ip"]
    assert user.startswith("h:")
    assert len(user) == 18
    assert one[1].attributes["user"] == user
    assert one[1].attributes["net.src_ip"] == ip
    assert one[0].message == f"Accepted password for {user} from {ip} port 22"
    assert one[0].tags["redaction.hashed"] == "2"
    # Stable across runs (a new processor), different under another secret.
    rerun = (await run([event("x", attributes={"user": "bob"})], [hashing()])).events[0]
    assert rerun.attributes["user"] == user
    monkeypatch.setenv("TEST_HASH_SECRET", "another-secret-32-bytes-long-xxx")
    rekeyed = (await run([event("x", attributes={"user": "bob"})], [hashing()])).events[0]
    assert rekeyed.attributes["user"] != user


async def test_hashing_normalises_emails_hosts_and_ips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "hash.key"
    secret_file.write_text(SECRET + "\n")
    settings = hashing(secret_file=str(secret_file), fields=["email", "ip"], hash_host=True)
    events = [
        event("", host="GW-1.Example.com.", attributes={"email": "Bob@Example.COM", "ip": "::1"}),
        event("", host="gw-1.example.com", attributes={"email": "bob@example.com", "ip": "0::1"}),
    ]
    one, two = (await run(events, [settings])).events
    assert one.host == two.host
    assert one.attributes["email"] == two.attributes["email"]
    assert one.attributes["ip"] == two.attributes["ip"]
    assert normalise(" 2001:DB8:0::1 ", False) == "2001:db8::1"
    assert normalise("Alice", False) == "Alice"


async def test_hashing_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_HASH_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"pipeline\.processors\.0: .*hash secret"):
        pipeline([hashing()])
    monkeypatch.setenv("TEST_HASH_SECRET", "short")
    with pytest.raises(ConfigError, match=r"at least 16 bytes"):
        pipeline([hashing()])
    with pytest.raises(ConfigError, match=r"pipeline\.processors\.0: .*secret_file: cannot read"):
        pipeline([hashing(secret_file="/nonexistent/hash.key")])


async def test_hash_secret_never_appears_in_the_description(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_HASH_SECRET", SECRET)
    described = pipeline([hashing()]).processors[0].describe()
    assert SECRET not in str(described)
    assert described["secret_env"] == "TEST_HASH_SECRET"


async def test_validator_quarantines_what_masking_let_through() -> None:
    processors: list[dict[str, Any]] = [
        {"type": "mask_patterns", "detectors": ["email"]},
        {"type": "safety_validator"},
    ]
    leaky = event("paid with 4111 1111 1111 1111", id="leaky")
    masked = event("mail bob@example.com", id="masked")
    clean = event("link up", id="clean")
    result = await run([leaky, masked, clean], processors)
    assert [e.id for e in result.events] == ["masked", "clean"]
    assert result.events[0].message == "mail [REDACTED:email]"
    [quarantined] = result.quarantined
    assert quarantined.index == 0
    assert quarantined.processor == "safety_validator"
    assert quarantined.reason == "redaction validator found card in message"
    assert "4111" not in quarantined.reason


async def test_validator_names_places_and_checks_raw_and_attributes() -> None:
    source = event(
        "fine",
        attributes={"note": "ssn 123-45-6789"},
        raw=b"token=ghp_R2d9kFq8Lm3Zx7Vb1Nc5Tg0Hy4Uj6Ws2Ea8Q",
    )
    result = await run([source], [{"type": "safety_validator"}])
    [quarantined] = result.quarantined
    assert quarantined.reason == (
        "redaction validator found github_token in raw; secret in raw; ssn in attributes[note]"
    )


async def test_oversize_text_is_truncated_by_masking_and_refused_by_the_validator() -> None:
    long = "x" * 200 + " 4111111111111111"
    masked = await run([event(long)], [{"type": "mask_patterns", "max_scan_chars": 100}])
    assert masked.events[0].message == "x" * 100 + " [TRUNCATED]"
    assert masked.events[0].tags["redaction.truncated"] == "1"
    checked = await run([event(long)], [{"type": "safety_validator", "max_scan_chars": 100}])
    assert "over 100 chars, not verifiable: message" in checked.quarantined[0].reason


async def test_default_pipeline_redacts_counts_and_passes_clean_events() -> None:
    dirty = event(
        "login for jane@example.com with password=hunter2 card 5555 5555 5555 4444",
        attributes={"db.password": "x", "syslog.pid": "12"},
    )
    result = await run([dirty])
    [redacted] = result.events
    assert redacted.message == (
        "login for [REDACTED:email] with password=[REDACTED:secret] card [REDACTED:card]"
    )
    counts = {k: v for k, v in redacted.tags.items() if k.startswith("redaction.")}
    assert counts == {
        "redaction.email": "1",
        "redaction.secret": "1",
        "redaction.card": "1",
        "redaction.dropped": "1",
    }
    assert "db.password" not in redacted.attributes


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"type": "mask_patterns", "detectors": ["card", "nope"]}, r"0\.detectors: .*nope"),
        (
            {"type": "mask_patterns", "custom": [{"name": "x", "pattern": "("}]},
            r"0\.custom\.0\.pattern",
        ),
        (
            {"type": "mask_patterns", "custom": [{"name": "X!", "pattern": "a"}]},
            r"0\.custom\.0\.name",
        ),
        ({"type": "mask_patterns", "max_scan_chars": 1}, r"0\.max_scan_chars"),
        ({"type": "drop_fields", "names": [""]}, r"0\.names"),
        ({"type": "safety_validator", "colour": "red"}, r"0\.colour: unknown key"),
    ],
)
def test_bad_settings_name_their_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"pipeline\.processors\.{message}"):
        pipeline([settings])


def test_redaction_must_come_before_any_enrichment() -> None:
    with pytest.raises(ConfigError, match=r"processors\.1: 'mask_patterns' \(redaction\) must"):
        pipeline([{"type": "service_extraction"}, {"type": "mask_patterns"}])
    pipeline([{"type": "drop_fields"}, {"type": "mask_patterns"}, {"type": "severity_map"}])


def test_llm_stage_needs_redaction_before_it() -> None:
    from pipeline_svc.pipeline import check_order
    from pipeline_svc.processors.base import Item, Outcome, Processor, Settings

    class FakeLlm(Processor):
        type_name = "fake_llm"
        stage = "llm"

        def process(self, items: list[Item]) -> Outcome:
            return Outcome()

    llm = FakeLlm("llm", Settings())
    masker = pipeline([{"type": "mask_patterns"}]).processors[0]
    with pytest.raises(ConfigError, match=r"processors\.0: 'llm' \(llm\) must come after"):
        check_order([llm, masker])
    check_order([masker, llm])


def test_default_pipeline_order() -> None:
    names = [p.name for p in pipeline().processors]
    assert names == [
        "drop_fields",
        "mask_patterns",
        "safety_validator",
        "timestamp_normalize",
        "severity_map",
        "service_extraction",
        "quality_validation",
    ]
