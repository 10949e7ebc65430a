"""Realistic syslog for the benchmarks, made from the real samples in ../shared/data.

Each sample line becomes a template (program, pid, message, priority); a generated line is
an RFC 3164 line with the current time, the sending device's host name, a fresh pid and
the template's IPv4 addresses moved within their /24, so streams look like many real
devices and no two sites send byte-identical text.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = (
    "loghub/OpenSSH/OpenSSH_2k.log",
    "loghub/Linux/Linux_2k.log",
    "samples/openwrt/openwrt_logread_nikolaysalinder_2020-2023.log",
    "samples/crowdsec_hub_tests/iptables-logs__iptables-logs.log",
    "samples/crowdsec_hub_tests/sshd-logs__sshd-logs.log",
    "samples/crowdsec_hub_tests/ssh-bf__ssh-bf.log",
)
# 'Thu Nov 12 13:20:06 2020 kern.info kernel: msg' (OpenWrt logread)
_LOGREAD = re.compile(
    r"\w{3} \w{3} +\d+ [\d:]{8} \d{4} (?P<facility>\w+)\.(?P<level>\w+) "
    r"(?P<program>[^:\[\s]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)"
)
# 'Jun 14 15:16:01 combo sshd(pam_unix)[19939]: msg' (RFC 3164 as syslogd stores it)
_BSD = re.compile(
    r"\w{3} +\d+ [\d:]{8} \S+ (?P<program>[^:\[\s]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)"
)
_IPV4 = re.compile(r"\b(\d{1,3}\.\d{1,3}\.\d{1,3})\.\d{1,3}\b")
FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "authpriv": 10, "cron": 9}
LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warn": 4, "notice": 5, "info": 6}


@dataclass(frozen=True)
class Template:
    pri: int
    program: str
    has_pid: bool
    message: str


def _default_pri(program: str) -> int:
    if program.startswith("sshd"):
        return FACILITIES["authpriv"] * 8 + LEVELS["info"]
    if program == "kernel":
        return FACILITIES["kern"] * 8 + LEVELS["warn"]
    return FACILITIES["daemon"] * 8 + LEVELS["info"]


def template_of(line: str) -> Template | None:
    logread = _LOGREAD.match(line)
    if logread is not None:
        pri = FACILITIES.get(logread["facility"], 1) * 8 + LEVELS.get(logread["level"], 5)
        return Template(pri, logread["program"], bool(logread["pid"]), logread["msg"])
    bsd = _BSD.match(line)
    if bsd is not None:
        program = bsd["program"]
        return Template(_default_pri(program), program, bool(bsd["pid"]), bsd["msg"].rstrip())
    return None


def load_templates() -> list[Template]:
    templates = []
    for name in SAMPLES:
        text = (DATA / name).read_text(encoding="utf-8", errors="replace")
        templates += [t for t in map(template_of, text.splitlines()) if t is not None]
    if not templates:
        raise RuntimeError(f"no syslog templates found under {DATA}")
    return templates


class LineMaker:
    """Endless RFC 3164 lines of one device, from templates shuffled by its own seed."""

    def __init__(self, templates: list[Template], host: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.templates = self.rng.sample(templates, len(templates))
        self.host = host
        self.position = 0
        self._stamp_second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        second = int(time.time())
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(second))
        return self._stamp

    def line(self) -> bytes:
        template = self.templates[self.position % len(self.templates)]
        self.position += 1
        rng = self.rng
        tag = (
            f"{template.program}[{rng.randrange(100, 32768)}]"
            if template.has_pid
            else (template.program)
        )
        octet = rng.randrange(1, 255)
        message = _IPV4.sub(lambda m: f"{m[1]}.{octet}", template.message)
        return f"<{template.pri}>{self._timestamp()} {self.host} {tag}: {message}".encode()

    def lines(self, count: int) -> list[bytes]:
        return [self.line() for _ in range(count)]


def device_name(index: int) -> str:
    return f"site{index:03d}-gw"


def stream(templates: list[Template], devices: int, seed: int = 1) -> Iterator[bytes]:
    """Lines of ``devices`` devices interleaved round-robin (one sender for many hosts)."""
    makers = [LineMaker(templates, device_name(i), seed + i) for i in range(devices)]
    while True:
        for maker in makers:
            yield maker.line()
