"""Real log samples from ../shared/data, parsed the way the edge agent parses syslog."""

from __future__ import annotations

from pathlib import Path

from edge_agent.parsers.syslog import Received, parse_syslog
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CROWDSEC = DATA / "samples" / "crowdsec_hub_tests"
HDFS = DATA / "loghub" / "logai_HDFS_5k"


def crowdsec_events(test: str) -> list[event_pb2.Event]:
    """The events of one CrowdSec hub test log (e.g. ``ssh-bf``) as the agent parses them."""
    (path,) = CROWDSEC.glob(f"{test}__*.log")
    received = Received(received_ns=now_ns(), src_ip="192.0.2.1", source="site-a/syslog-udp")
    lines = path.read_text().splitlines()
    return [parse_syslog(line.encode(), received) for line in lines if line.strip()]
