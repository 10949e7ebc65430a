"""Every built-in detector: true positives in realistic lines, look-alikes that survive."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redaction_helpers import DATA, LOGHUB, event, log_lines, loghub, masked_kinds, redact, run
from redaction_helpers import syslog_events as events_of

from pipeline_svc.processors.redaction import validators

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
GITHUB = "ghp_R2d9kFq8Lm3Zx7Vb1Nc5Tg0Hy4Uj6Ws2Ea8Q"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n"
    "-----END RSA PRIVATE KEY-----"
)

# (detector kind, line, the sensitive part that must be gone)
TRUE_POSITIVES = [
    ("card", "payment declined card=4111 1111 1111 1111 amount=12.00", "4111 1111 1111 1111"),
    ("card", "order 981 paid with 5555-5555-5555-4444 via gateway", "5555-5555-5555-4444"),
    ("card", "amex 378282246310005 approved", "378282246310005"),
    ("card", "discover 6011111111111117 settled", "6011111111111117"),
    ("card", "jcb card 3530111333300000 ok", "3530111333300000"),
    ("card", "mc2 2223003122003222 ok", "2223003122003222"),
    ("ssn", "HR import: employee ssn 123-45-6789 updated", "123-45-6789"),
    ("ssn", "applicant SSN 536 22 8726 verified", "536 22 8726"),
    ("itin", "tax id 912-70-1234 on file", "912-70-1234"),
    ("email", "postfix/smtp[811]: to=<Jane.Doe@Example.co.uk>, relay=mx", "Jane.Doe@Example.co.uk"),
    ("email", "password reset sent to ops+alerts@corp.example.com", "ops+alerts@corp.example.com"),
    ("phone", "SMS alert sent to +1 415-555-0132 ok", "415-555-0132"),
    ("phone", "callback +44 20 7946 0958 requested", "7946 0958"),
    ("phone", "call center (212) 555-0199 queued", "555-0199"),
    ("phone", "contact 212-555-0199 for support", "212-555-0199"),
    ("iban", "SEPA transfer to DE89370400440532013000 booked", "DE89370400440532013000"),
    ("iban", "payee IBAN GB82 WEST 1234 5698 7654 32 added", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "refund FR1420041010050500013M02606 sent", "FR1420041010050500013M02606"),
    ("aws_key", "boto: using AKIAIOSFODNN7EXAMPLE for s3", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_key", "sts session ASIAY34FZKBOKMUTVV7A issued", "ASIAY34FZKBOKMUTVV7A"),
    ("github_token", f"git clone https://x:{GITHUB}@github.com/o/r", GITHUB),
    ("github_token", f"GITHUB_TOKEN={GITHUB}", GITHUB),
    ("github_token", "pat github_pat_11ABCDEFG0123456789_abcdefghijKLMNOPQRstuv used", "11ABCDEFG"),
    ("slack_token", "slack: posting with xoxb-123456789012-1234567890123-AbCdEf", "xoxb-1234"),
    ("slack_token", "hook https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX", "T0000"),
    ("stripe_key", "charge failed key sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyj"),
    ("stripe_key", "restricted rk_test_51H8zYqKZ0aBcDeFgHiJk in use", "51H8zYqKZ0"),
    ("jwt", f"api: request with token {JWT} rejected", JWT),
    ("auth_header", "nginx: Authorization: Bearer abc123DEF456ghi789 denied", "abc123DEF456ghi789"),
    ("auth_header", "curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZA=='", "dXNlcjpwYXNzd29yZA"),
    ("auth_header", "proxy sent Bearer 9f8e7d6c5b4a39281706abcdef in header", "9f8e7d6c5b4a3928"),
    ("auth_header", "upstream used basic dXNlcjpwYXNzd29yZA== for /admin", "dXNlcjpwYXNzd29yZA"),
    ("private_key", f"config dump: {PEM} end", "MIIEowIBAAKCAQEA"),
    (
        "private_key",
        "key file head -----BEGIN PRIVATE KEY----- MIIEvQIBADANBgkq",
        "MIIEvQIBADANBgkq",
    ),
    ("url_credentials", "connect postgres://app:hunter2@db.internal:5432/x", "hunter2"),
    ("url_credentials", "proxy http://bob:S3cr3t!@10.0.0.5:3128 down", "S3cr3t!"),
    ("connection_string", "Server=db1;Database=sales;User Id=sa;Pwd=Zx9!pq;", "Zx9!pq"),
    ("secret", "sudo: COMMAND=/usr/bin/mysql --password=hunter2 -u root", "hunter2"),
    ("secret", 'app: config {"api_key": "k-12345-abcde"} loaded', "k-12345-abcde"),
    ("secret", "vpn: client_secret: s3cr3tvalue rotated", "s3cr3tvalue"),
    ("secret", "GET /login?user=bob&token=a1b2c3d4 200", "a1b2c3d4"),
]


@pytest.mark.parametrize(("kind", "line", "secret"), TRUE_POSITIVES)
async def test_true_positive_is_masked_and_counted(kind: str, line: str, secret: str) -> None:
    result = await redact(line)
    assert secret not in result.message
    assert f"[REDACTED:{kind}]" in result.message
    assert int(result.tags[f"redaction.{kind}"]) >= 1
    assert all(secret not in value for value in result.tags.values())


# Lines (mostly from the real samples) that look like something but are not.
LOOK_ALIKES = [
    "081109 203807 222 INFO dfs.DataNode$PacketResponder: for block blk_-6952295868487656571",
    "081109 203615 148 INFO dfs.DataNode: PacketResponder 1 for block blk_38865049064139660",
    "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 RAS KERNEL INFO",
    "epoch 1767323045123 and 1767323045123456789 and 1117838570",
    "request 123e4567-e89b-12d3-a456-426614174000 done",
    "at commit 9fceb02d0ae598e95dc970b74767f19372d61af8 (HEAD)",
    "firmware 10.0.0.1-beta and version 1.2.3.4 installed",
    "card 4111 1111 1111 1112 failed Luhn, so it is no card",
    "ids 000-12-3456 666-12-3456 123-00-4567 123-45-0000 900-12-3456",
    "IBAN-like GB82WEST12345698765431 fails mod 97",
    "sshd[24200]: Failed password for invalid user admin from 173.234.31.186 port 2191 ssh2",
    "passwd[5301]: pam_unix(passwd:chauthtok): password changed for root",
    "sudo: bob : TTY=pts/0 ; PWD=/home/bob ; USER=root ; COMMAND=/bin/ls",
    "Nov 9 12:01:01 src@eadmin1 crond(pam_unix)[4307]: session closed for user root",
    "kernel: [    0.757147] ar933x-uart: ttyATH0 at MMIO 0x18020000 (irq = 11) is a AR933X UART",
    "hostapd: wlan0: STA f2:60:d2:4c:60:05 WPA: pairwise key handshake completed (RSN)",
    "ido chip status changed: FF:F2:9F:16:E2:23:00:0D:60:E9:1D:DC ip=10.0.0.151 v=9 t=4",
    "blockMap updated: 10.251.73.220:50010 is added to blk_7128370237687728475 size 67108864",
    "httpd: Bearer authentication required; basic authentication failed",
    "tokens: 5 password: [REDACTED:secret] token=",
    "passwd: password for root changed by root",
    "app: eyJustAWord.notReallyAToken.x in text",
    "time +0100 offset; uptime 2d 14:03:11; pid 12345678",
    "aws id AKIAshort and ghp_short and xoxb- and sk_live_",
]


@pytest.mark.parametrize("line", LOOK_ALIKES)
async def test_look_alike_survives(line: str) -> None:
    result = await redact(line)
    assert result.message == line
    assert not [key for key in result.tags if key.startswith("redaction.")]


async def test_addresses_are_kept_by_default_and_masked_when_asked() -> None:
    line = "DROP IN=eth0 SRC=203.0.113.9 DST=2001:db8::1 MAC=00:1a:2b:3c:4d:5e firmware 1.2-beta"
    assert (await redact(line)).message == line
    masked = await redact(line, mask_ip_addresses=True, mask_mac_addresses=True)
    assert masked.message == (
        "DROP IN=eth0 SRC=[REDACTED:ipv4] DST=[REDACTED:ipv6] MAC=[REDACTED:mac] firmware 1.2-beta"
    )


@pytest.mark.parametrize(
    "line",
    [
        "firmware 10.0.0.1-beta rolled out",
        "bad address 300.1.2.3 and 1.2.3 and 10.0.0.1.5",
        "clock 12:30:45 and std::string and a::b::c",
        "chip FF:F2:9F:16:E2:23:00:0D:60:E9:1D:DC",
    ],
)
async def test_address_look_alikes_survive_even_with_address_masking(line: str) -> None:
    masked = await redact(line, mask_ip_addresses=True, mask_mac_addresses=True)
    assert masked.message == line


async def test_attribute_and_tag_values_are_masked_too() -> None:
    source = [
        event(
            "ok",
            attributes={"http.referer": "https://a.example/?email=x@example.org"},
            tags={"note": "card 4111111111111111"},
        )
    ]
    result = await run(source, [{"type": "mask_patterns"}])
    redacted = result.events[0]
    assert "x@example.org" not in redacted.attributes["http.referer"]
    assert redacted.tags["note"] == "card [REDACTED:card]"
    assert redacted.tags["redaction.card"] == "1"


async def test_custom_pattern_with_replacement_and_secret_group() -> None:
    custom = [
        {"name": "employee_id", "pattern": r"\bEMP-\d{6}\b", "prefilter": ["EMP-"]},
        {
            "name": "pin",
            "pattern": r"pin=(?P<secret>\d{4})",
            "replacement": "****",
            "ignore_case": True,
        },
    ]
    result = await redact("badge EMP-123456 entered PIN=4321", custom=custom)
    assert result.message == "badge [REDACTED:employee_id] entered PIN=****"
    assert result.tags["redaction.employee_id"] == "1"
    assert result.tags["redaction.pin"] == "1"


@pytest.mark.parametrize(
    "path",
    [loghub(name) for name in LOGHUB]
    + [DATA / "samples/openwrt/openwrt_logread_nikolaysalinder_2020-2023.log"]
    + sorted((DATA / "samples/crowdsec_hub_tests").glob("*.log"))
    + [DATA / "samples/elastic_integrations_iptables/test-iptables-raw.log"],
    ids=lambda path: path.name,
)
async def test_real_logs_pass_the_default_pipeline_untouched(path: Path) -> None:
    """No false positives on real logs: the one email in Linux_2k is a real address."""
    lines = log_lines(path)
    result = await run(events_of(lines))
    expected = {"email": 1} if path == loghub("Linux") else {}
    assert dict(masked_kinds(result.events)) == expected
    assert result.quarantined == []
    kept = [e.message for e in result.events if "REDACTED" not in e.message]
    assert len(kept) == len(lines) - sum(expected.values())
    assert kept == [line for line in lines if "bhcompile@" not in line]


async def test_ip_masking_on_real_ssh_logs_leaves_no_address() -> None:
    lines = log_lines(loghub("OpenSSH"))
    result = await run(events_of(lines), [{"type": "mask_patterns", "mask_ip_addresses": True}])
    counts = masked_kinds(result.events)
    assert counts["ipv4"] > 1000
    assert set(counts) == {"ipv4"}
    dotted_quad = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")
    assert not any(dotted_quad.search(e.message) for e in result.events)


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("79927398713", True)],
)
def test_luhn(number: str, valid: bool) -> None:
    assert validators.luhn_ok(number) is valid


def test_us_tin_ranges() -> None:
    assert validators.us_tin_kind("123-45-6789") == "ssn"
    assert validators.us_tin_kind("912-70-1234") == "itin"
    assert validators.us_tin_kind("912-93-1234") is None
    for invalid in ("000-12-3456", "666-12-3456", "123-00-4567", "123-45-0000"):
        assert validators.us_tin_kind(invalid) is None


def test_iban_checks_length_and_mod97() -> None:
    assert validators.iban_ok("NL91ABNA0417164300")
    assert not validators.iban_ok("NL91ABNA041716430")
    assert not validators.iban_ok("NL92ABNA0417164300")
    assert not validators.iban_ok("ZZ91ABNA0417164300")
