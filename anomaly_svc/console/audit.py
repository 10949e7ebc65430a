"""The audit trail: one log line per operator action (who, what, on which object, outcome)."""

from __future__ import annotations

import logging

AUDIT_LOGGER = "edgebot.console.audit"
_log = logging.getLogger(AUDIT_LOGGER)


def audit(operator: str, action: str, outcome: str = "ok", **target: str | int | None) -> None:
    """``target`` names what was acted on: anomaly_id, export_id, agent, version, client..."""
    _log.info(
        "console %s by %s: %s",
        action,
        operator,
        outcome,
        extra={
            "audit_operator": operator,
            "audit_action": action,
            "audit_outcome": outcome,
            **{f"audit_{key}": value for key, value in target.items() if value is not None},
        },
    )
