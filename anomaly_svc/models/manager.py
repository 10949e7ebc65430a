"""ModelManager: the newest valid model per agent, watched on disk and swapped while running.

Layout: ``<dir>/<agent>/<version>/{model.txt,metadata.json}``; versions sort by name (the
trainer names them by UTC time). A poll every ``poll_interval_s`` compares what is on disk
with what was loaded; a new version is loaded in a worker thread and swapped in with one
assignment, so a running cycle keeps the model it started with and the next cycle uses the
new one. A version that fails to load, or whose feature names differ from what the extractor
computes for its vocabulary, is REFUSED (logged, kept in ``statuses()`` with the error) and
the previous model keeps serving.

``roll_back`` serves an older version and pins the agent: the poll loads nothing newer for
it until ``rescan(force=True)`` names the agent (ReloadModels), which releases the pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from anomaly_svc.models.features import (
    FEATURE_SET_VERSION,
    FeatureExtractor,
    LogLine,
    Vocabulary,
)
from anomaly_svc.models.train import METADATA_FILE, MODEL_FILE
from mesh.timeutil import now_ns

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    LOADED = "loaded"
    REFUSED = "refused"
    RETIRED = "retired"


class ModelError(ValueError):
    """A model folder that cannot serve."""


@dataclass
class LoadedModel:
    agent: str
    version: str
    path: Path
    booster: lgb.Booster
    extractor: FeatureExtractor
    threshold: float
    metadata: dict[str, Any]
    load_ns: int

    def score(self, groups: Sequence[Sequence[LogLine]]) -> np.ndarray:
        if not groups:
            return np.zeros(0)
        return np.asarray(self.booster.predict(self.extractor.matrix(groups)), dtype=float)


@dataclass
class ModelStatus:
    agent: str
    version: str
    path: Path
    state: ModelState
    load_ns: int = 0
    error: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    pinned: bool = False


def load_model(agent: str, path: Path) -> LoadedModel:
    try:
        metadata = json.loads((path / METADATA_FILE).read_text())
        booster = lgb.Booster(model_file=str(path / MODEL_FILE))
    except (OSError, ValueError, lgb.basic.LightGBMError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from None
    try:
        if metadata.get("feature_set_version") != FEATURE_SET_VERSION:
            raise ModelError(
                f"feature set version {metadata.get('feature_set_version')!r}, "
                f"this build extracts version {FEATURE_SET_VERSION}"
            )
        extractor = FeatureExtractor(Vocabulary.from_json(metadata["vocabulary"]))
        threshold = float(metadata["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path / METADATA_FILE}: invalid metadata: {exc}") from None
    expected = extractor.feature_names()
    for what, names in (
        ("metadata", metadata.get("feature_names")),
        ("model", booster.feature_name()),
    ):
        if names != expected:
            raise ModelError(
                f"{what} feature names do not match the feature extractor "
                f"({len(names or [])} names, extractor computes {len(expected)})"
            )
    return LoadedModel(agent, path.name, path, booster, extractor, threshold, metadata, now_ns())


def _versions(agent_dir: Path) -> list[Path]:
    return sorted(
        (p for p in agent_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _signature(path: Path) -> tuple[float, ...]:
    stamps = []
    for name in (MODEL_FILE, METADATA_FILE):
        try:
            stamps.append((path / name).stat().st_mtime)
        except OSError:
            stamps.append(-1.0)
    return tuple(stamps)


class ModelManager:
    def __init__(self, directory: Path, poll_interval_s: float) -> None:
        self.directory = directory
        self.poll_interval_s = poll_interval_s
        self._current: dict[str, LoadedModel] = {}
        self._statuses: dict[str, list[ModelStatus]] = {}
        self._seen: dict[tuple[str, str], tuple[float, ...]] = {}
        self._pinned: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def current(self, agent: str) -> LoadedModel | None:
        return self._current.get(agent)

    def statuses(self, agents: Sequence[str] = ()) -> list[ModelStatus]:
        return [
            status
            for agent in sorted(self._statuses)
            if not agents or agent in agents
            for status in self._statuses[agent]
        ]

    def pinned(self, agent: str) -> bool:
        return agent in self._pinned

    async def start(self) -> None:
        await self.rescan()
        self._task = asyncio.create_task(self._poll(), name="model-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.rescan()
            except Exception:
                log.exception("model folder scan failed")

    async def rescan(self, agents: Sequence[str] = (), force: bool = False) -> list[ModelStatus]:
        """Load whatever changed on disk (``force``: retry refused versions too)."""
        async with self._lock:
            if force:
                self._seen = {k: v for k, v in self._seen.items() if agents and k[0] not in agents}
                released = self._pinned & set(agents) if agents else set(self._pinned)
                self._pinned -= released
                for agent in released:
                    self._mark_pinned(agent)
                    log.info("model rollback pin released", extra={"agent": agent})
            await asyncio.to_thread(self._scan, tuple(agents))
        return self.statuses(agents)

    async def roll_back(self, agent: str, version: str = "") -> list[ModelStatus]:
        """Serve ``version`` (default: the newest older one that loads) and pin the agent."""
        async with self._lock:
            model = await asyncio.to_thread(self._older_model, agent, version)
            self._swap(agent, model)
            self._pinned.add(agent)
            self._mark_pinned(agent)
        log.info("model rolled back", extra={"agent": agent, "version": model.version})
        return self.statuses([agent])

    def _older_model(self, agent: str, version: str) -> LoadedModel:
        current = self._current.get(agent)
        if current is None:
            raise ModelError(f"no model is serving for agent {agent!r}")
        agent_dir = self.directory / agent
        versions = _versions(agent_dir) if agent_dir.is_dir() else []
        if version:
            if version == current.version:
                raise ModelError(f"version {version!r} is already serving")
            candidates = [p for p in versions if p.name == version]
            if not candidates:
                raise ModelError(f"agent {agent!r} has no model version {version!r}")
        else:
            candidates = [p for p in reversed(versions) if p.name < current.version]
            if not candidates:
                raise ModelError(f"agent {agent!r} has no version older than {current.version}")
        errors = []
        for path in candidates:
            try:
                return load_model(agent, path)
            except ModelError as exc:
                self._refuse(agent, path, str(exc))
                errors.append(str(exc))
        raise ModelError("; ".join(errors))

    def _mark_pinned(self, agent: str) -> None:
        for status in self._statuses.get(agent, []):
            status.pinned = agent in self._pinned and status.state == ModelState.LOADED

    def _scan(self, agents: tuple[str, ...]) -> None:
        if not self.directory.is_dir():
            return
        for agent_dir in sorted(p for p in self.directory.iterdir() if p.is_dir()):
            if (agents and agent_dir.name not in agents) or agent_dir.name in self._pinned:
                continue
            self._scan_agent(agent_dir.name, _versions(agent_dir))

    def _scan_agent(self, agent: str, versions: list[Path]) -> None:
        """Newest first: the newest version that loads wins; nothing older than the serving
        model is ever loaded."""
        current = self._current.get(agent)
        for path in reversed(versions):
            if current is not None and path.name < current.version:
                return
            signature = _signature(path)
            if self._seen.get((agent, path.name)) == signature:
                if current is not None and path.name == current.version:
                    return
                continue
            self._seen[(agent, path.name)] = signature
            try:
                model = load_model(agent, path)
            except ModelError as exc:
                self._refuse(agent, path, str(exc))
                continue
            self._swap(agent, model)
            return

    def _refuse(self, agent: str, path: Path, error: str) -> None:
        log.error(
            "model refused, the previous one keeps serving",
            extra={"agent": agent, "version": path.name, "error": error},
        )
        statuses = [s for s in self._statuses.get(agent, []) if s.version != path.name]
        statuses.append(ModelStatus(agent, path.name, path, ModelState.REFUSED, now_ns(), error))
        self._statuses[agent] = statuses

    def _swap(self, agent: str, model: LoadedModel) -> None:
        statuses = []
        for status in self._statuses.get(agent, []):
            if status.version == model.version:
                continue
            if status.state == ModelState.LOADED:
                status.state = ModelState.RETIRED
            statuses.append(status)
        statuses.append(
            ModelStatus(
                agent, model.version, model.path, ModelState.LOADED, model.load_ns,
                metadata=model.metadata,
            )
        )  # fmt: skip
        self._statuses[agent] = statuses
        self._current[agent] = model
        log.info("model loaded", extra={"agent": agent, "version": model.version})
