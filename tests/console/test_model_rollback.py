"""Rolling a model back: an older version serves, stays pinned, and ReloadModels releases it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from console_samples import HDFS

from anomaly_svc.models.datasets import load
from anomaly_svc.models.manager import ModelError, ModelManager, ModelState
from anomaly_svc.models.train import MODEL_FILE, train

OLD, NEW, NEWER = "20240101T000000000000Z", "20250101T000000000000Z", "20260101T000000000000Z"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train("logpattern", load(HDFS, "hdfs"), tmp_path_factory.mktemp("training")).path


def _install(trained: Path, models: Path, version: str) -> None:
    shutil.copytree(trained, models / "logpattern" / version)


def _states(manager: ModelManager) -> dict[str, tuple[ModelState, bool]]:
    return {s.version: (s.state, s.pinned) for s in manager.statuses(["logpattern"])}


async def test_roll_back_pins_the_previous_version_until_reload(
    trained: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    _install(trained, models, OLD)
    _install(trained, models, NEW)
    manager = ModelManager(models, poll_interval_s=3600)
    await manager.rescan()
    assert _states(manager)[NEW] == (ModelState.LOADED, False)

    await manager.roll_back("logpattern")
    current = manager.current("logpattern")
    assert current is not None
    assert current.version == OLD
    assert _states(manager) == {
        NEW: (ModelState.RETIRED, False),
        OLD: (ModelState.LOADED, True),
    }

    _install(trained, models, NEWER)
    await manager.rescan()
    assert manager.current("logpattern").version == OLD  # type: ignore[union-attr]
    assert manager.pinned("logpattern")

    await manager.rescan(["logpattern"], force=True)
    assert manager.current("logpattern").version == NEWER  # type: ignore[union-attr]
    assert not manager.pinned("logpattern")
    assert _states(manager)[NEWER] == (ModelState.LOADED, False)


async def test_roll_back_skips_a_broken_older_version_and_names_what_is_missing(
    trained: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    _install(trained, models, OLD)
    _install(trained, models, NEW)
    _install(trained, models, NEWER)
    (models / "logpattern" / NEW / MODEL_FILE).write_text("garbage\n")
    manager = ModelManager(models, poll_interval_s=3600)
    with pytest.raises(ModelError, match="no model is serving"):
        await manager.roll_back("logpattern")
    await manager.rescan()

    await manager.roll_back("logpattern")
    assert manager.current("logpattern").version == OLD  # type: ignore[union-attr]
    assert _states(manager)[NEW][0] == ModelState.REFUSED
    with pytest.raises(ModelError, match="no version older"):
        await manager.roll_back("logpattern")
    with pytest.raises(ModelError, match="no model version 'nope'"):
        await manager.roll_back("logpattern", "nope")
    await manager.roll_back("logpattern", NEWER)
    assert manager.current("logpattern").version == NEWER  # type: ignore[union-attr]
