"""Training on labelled Loghub data, and the ModelManager's loading rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from anomaly_samples import BGL, HDFS

from anomaly_svc.models.datasets import load
from anomaly_svc.models.manager import ModelManager, ModelState
from anomaly_svc.models.train import METADATA_FILE, MODEL_FILE, train
from edgebot.cli import main


def test_bgl_per_line_f1_on_the_last_30_percent(tmp_path: Path) -> None:
    result = train("logpattern", load(BGL, "bgl"), tmp_path)
    assert (result.train_size, result.test_size) == (1400, 600)
    assert result.test.f1 >= 0.90
    metadata = json.loads((result.path / METADATA_FILE).read_text())
    assert metadata["version"] == result.version == result.path.name
    assert metadata["threshold"] == result.threshold
    assert metadata["metrics"]["test_f1"] == result.test.f1
    assert metadata["vocabulary"]["mode"] == "line"
    assert {m["name"] for m in metadata["vocabulary"]["masking"]} >= {"MAC", "IP", "NUM", "HEX"}
    assert metadata["data_start"].startswith("2005-06-03")
    assert (result.path / MODEL_FILE).is_file()


def test_hdfs_sessions_f1_with_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--agent", "logpattern", "--data", str(HDFS), "--format", "hdfs",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    f1 = float(printed.split(" F1 ")[1].split()[0])
    assert f1 >= 0.90
    (version,) = (tmp_path / "logpattern").iterdir()
    metadata = json.loads((version / METADATA_FILE).read_text())
    assert metadata["vocabulary"]["mode"] == "session"
    assert metadata["test_size"] == 33


def test_train_refuses_unlabelled_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(HDFS / "HDFS_5k.log"), "--format", "hdfs",
                 "--labels", str(tmp_path / "missing.csv"), "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "missing.csv" in capsys.readouterr().err


async def test_manager_loads_newest_valid_version_and_refuses_broken_ones(tmp_path: Path) -> None:
    models = tmp_path / "models"
    good = train("logpattern", load(BGL, "bgl"), models)
    manager = ModelManager(models, poll_interval_s=60)
    await manager.rescan()
    current = manager.current("logpattern")
    assert current is not None
    assert current.version == good.version
    broken = models / "logpattern" / "99990101T000000000000Z"
    shutil.copytree(good.path, broken)
    (broken / MODEL_FILE).write_text("not a lightgbm model\n")
    mismatched = models / "logpattern" / "99990102T000000000000Z"
    shutil.copytree(good.path, mismatched)
    metadata = json.loads((mismatched / METADATA_FILE).read_text())
    metadata["vocabulary"]["words"] = metadata["vocabulary"]["words"][:-1]
    (mismatched / METADATA_FILE).write_text(json.dumps(metadata))
    statuses = {s.version: s for s in await manager.rescan()}
    assert manager.current("logpattern").version == good.version  # type: ignore[union-attr]
    assert statuses[good.version].state == ModelState.LOADED
    assert statuses[broken.name].state == ModelState.REFUSED
    assert statuses[mismatched.name].state == ModelState.REFUSED
    assert "feature names" in statuses[mismatched.name].error
