"""LogPatternAgent: Drain3 templates of masked messages for any service.

Flags never-seen templates (once the miner has warmed up) and rare ones; when a model is
deployed for this agent it also scores each line, or each session (e.g. an HDFS block), and
reports those above the model's threshold.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

from pydantic import Field

from anomaly_svc.agents.base import (
    NOTICE,
    WARNING,
    AgentSettings,
    BaseAgent,
    EventView,
    Window,
    group_by,
    register,
)
from anomaly_svc.models.features import DEFAULT_MASKING, LogLine, make_miner
from anomaly_svc.models.manager import LoadedModel
from anomaly_svc.store import AnomalyRecord


class LogPatternSettings(AgentSettings):
    drain_depth: int = Field(4, ge=3, description="Drain3 tree depth.")
    drain_sim_th: float = Field(0.5, gt=0, le=1, description="Drain3 similarity threshold.")
    max_templates: int = Field(5000, ge=10, description="Templates kept (least recent dropped).")
    warmup_lines: int = Field(2000, ge=0, description="Lines mined before new templates count.")
    rare_ratio: float = Field(0.0005, ge=0, lt=1, description="Share of lines below = rare.")
    max_new_templates: int = Field(50, ge=1, description="New-template anomalies per cycle.")


def line_of(event: EventView) -> LogLine:
    return LogLine(event.message, event.service, event.level, event.time_ns)


def short_hash(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


@register
class LogPatternAgent(BaseAgent):
    type_name = "logpattern"
    settings_model = LogPatternSettings
    uses_model = True

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, LogPatternSettings)
        self.miner = make_miner(
            DEFAULT_MASKING, settings.drain_depth, settings.drain_sim_th, settings.max_templates
        )
        self.lines_mined = 0

    def analyze(self, window: Window, model: LoadedModel | None) -> list[AnomalyRecord]:
        s = self.settings
        assert isinstance(s, LogPatternSettings)
        found = self._templates(window.events, s)
        if model is not None:
            found += self._scored(window.events, model)
        return found

    def _templates(self, events: Sequence[EventView], s: LogPatternSettings) -> list[AnomalyRecord]:
        created: dict[int, list[EventView]] = {}
        seen: dict[int, list[EventView]] = {}
        for event in events:
            warm = self.lines_mined >= s.warmup_lines
            result = self.miner.add_log_message(event.message)
            self.lines_mined += 1
            cluster_id = int(result["cluster_id"])
            if warm and result["change_type"] == "cluster_created":
                created[cluster_id] = []
            (created if cluster_id in created else seen).setdefault(cluster_id, []).append(event)
        clusters = {c.cluster_id: c for c in self.miner.drain.clusters}
        found = []
        for cluster_id, cluster_events in list(created.items())[: s.max_new_templates]:
            template = clusters[cluster_id].get_template() if cluster_id in clusters else ""
            found.append(self.anomaly(
                "new_template", short_hash(template), cluster_events, severity=NOTICE,
                confidence=0.5, description=f"never-seen log pattern: {template[:200]}",
                features={"lines": len(cluster_events), "templates": len(clusters)},
            ))  # fmt: skip
        if self.lines_mined < s.warmup_lines:
            return found
        for cluster_id, cluster_events in seen.items():
            cluster = clusters.get(cluster_id)
            if cluster is None or cluster.size / self.lines_mined >= s.rare_ratio:
                continue
            template = cluster.get_template()
            found.append(self.anomaly(
                "rare_template", short_hash(template), cluster_events, severity=NOTICE,
                confidence=0.4, description=f"rare log pattern ({cluster.size} of "
                f"{self.lines_mined} lines): {template[:200]}",
                features={"template_count": cluster.size, "lines_mined": self.lines_mined},
            ))  # fmt: skip
        return found

    def _scored(self, events: Sequence[EventView], model: LoadedModel) -> list[AnomalyRecord]:
        if model.extractor.vocabulary.mode == "session":
            return self._scored_sessions(events, model)
        lines = [line_of(e) for e in events]
        scores = model.score([[line] for line in lines])
        flagged: list[tuple[tuple[str, str], tuple[EventView, float]]] = []
        for event, line, score in zip(events, lines, scores, strict=True):
            if score >= model.threshold:
                template, masked = model.extractor.template_of(line)
                key = f"t{template}" if template >= 0 else short_hash(masked)
                flagged.append(((event.host, key), (event, float(score))))
        found = []
        for (host, key), scored in group_by(flagged).items():
            found.append(self._model_anomaly("model_line", f"{host}:{key}", scored, model))
        return found

    def _scored_sessions(
        self, events: Sequence[EventView], model: LoadedModel
    ) -> list[AnomalyRecord]:
        sessions = group_by(
            (sid, e) for e in events if (sid := model.extractor.session_of(line_of(e)))
        )
        ids = list(sessions)
        scores = model.score([[line_of(e) for e in sessions[sid]] for sid in ids])
        return [
            self._model_anomaly(
                "model_session", sid, [(e, float(score)) for e in sessions[sid]], model
            )
            for sid, score in zip(ids, scores, strict=True)
            if score >= model.threshold
        ]

    def _model_anomaly(
        self, kind: str, key: str, scored: Sequence[tuple[EventView, float]], model: LoadedModel
    ) -> AnomalyRecord:
        events = [e for e, _ in scored]
        top = max(score for _, score in scored)
        levels = Counter(e.level for e in events)
        return self.anomaly(
            kind, key, events, severity=WARNING, confidence=top,
            description=f"model {model.version} scored {len(events)} line(s) as anomalous "
            f"(score {top:.3f} >= {model.threshold:.3f}): {events[-1].message[:160]}",
            features={"score": top, "threshold": model.threshold, "lines": len(events),
                      "min_level": float(min(levels))},
            model_version=model.version,
        )  # fmt: skip
