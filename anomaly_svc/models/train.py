"""Training a LightGBM model for an agent: chronological split, threshold, versioned output.

``train`` splits the data in time order (the first ``train_fraction`` trains, the rest is the
held-out test). The decision threshold is chosen on a validation slice of the training part —
its later half, scored fold by fold by models fitted only on what came before (rolling origin),
because a single small slice holds too few anomalies to place a threshold reliably — and kept
within ``[min_threshold, max_threshold]``. The final model is fitted on the whole training
part; precision, recall and F1 are measured on the held-out part. Output: ``model.txt`` and
``metadata.json`` in a new ``<out_dir>/<agent>/<version>/`` folder (written aside and
renamed, so a watcher never sees a half-written model).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from anomaly_svc.models.datasets import Dataset
from anomaly_svc.models.features import FEATURE_SET_VERSION, FeatureExtractor, fit_vocabulary
from mesh.timeutil import ns_to_iso

MODEL_FILE = "model.txt"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class TrainSettings:
    train_fraction: float = 0.7
    validation_start: float = 0.5
    """Where the validation slice starts, as a share of the training part."""
    validation_folds: int = 3
    min_threshold: float = 0.05
    max_threshold: float = 0.95
    num_boost_round: int = 300
    learning_rate: float = 0.1
    num_leaves: int = 7
    min_data_in_leaf: int = 3
    max_words: int = 200
    seed: int = 7
    params: dict[str, Any] = field(default_factory=dict)

    def lightgbm_params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_pre_filter": False,
            "deterministic": True,
            "seed": self.seed,
            "num_threads": 1,
            "verbose": -1,
            **self.params,
        }


@dataclass(frozen=True)
class Metrics:
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "true_positives": float(self.true_positives),
            "false_positives": float(self.false_positives),
            "false_negatives": float(self.false_negatives),
        }


@dataclass(frozen=True)
class TrainResult:
    version: str
    path: Path
    threshold: float
    test: Metrics
    validation: Metrics
    train_size: int
    test_size: int


class TrainingError(ValueError):
    """Data that cannot train a model (too small, one class only)."""


def metrics(labels: np.ndarray, predicted: np.ndarray) -> Metrics:
    tp = int(np.sum((predicted == 1) & (labels == 1)))
    fp = int(np.sum((predicted == 1) & (labels == 0)))
    fn = int(np.sum((predicted == 0) & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(precision, recall, f1, tp, fp, fn)


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score cut that maximises F1; ties go to the midpoint of the widest safe gap."""
    candidates = np.unique(scores)
    best = (-1.0, 0.5)
    for cut in candidates:
        f1 = metrics(labels, (scores >= cut).astype(int)).f1
        if f1 > best[0]:
            below = scores[scores < cut]
            # Halfway to the next lower score keeps a margin on both sides of the cut.
            best = (f1, float((cut + below.max()) / 2) if below.size else float(cut))
    return best[1]


def train(
    agent: str, dataset: Dataset, out_dir: Path, settings: TrainSettings | None = None
) -> TrainResult:
    settings = settings or TrainSettings()
    data = dataset.chronological()
    total = len(data.groups)
    split = int(total * settings.train_fraction)
    labels = np.array(data.labels)
    _check_classes(labels[:split], "the training part")
    vocabulary = fit_vocabulary(
        (line for group in data.groups[:split] for line in group),
        data.mode,
        max_words=settings.max_words,
        session_pattern=data.session_pattern,
    )
    extractor = FeatureExtractor(vocabulary)
    features = extractor.matrix(data.groups)
    names = extractor.feature_names()
    threshold, validation = _choose_threshold(features[:split], labels[:split], names, settings)
    booster = _fit(features[:split], labels[:split], names, settings)
    test = metrics(labels[split:], (_scores(booster, features[split:]) >= threshold).astype(int))
    metadata = {
        "agent": agent,
        "feature_set_version": FEATURE_SET_VERSION,
        "feature_names": names,
        "vocabulary": vocabulary.to_json(),
        "threshold": threshold,
        "metrics": {
            **{f"test_{k}": v for k, v in test.as_dict().items()},
            **{f"validation_{k}": v for k, v in validation.as_dict().items()},
        },
        "data_start": ns_to_iso(data.times_ns[0]),
        "data_end": ns_to_iso(data.times_ns[-1]),
        "train_size": split,
        "test_size": total - split,
        "params": settings.lightgbm_params(),
        "num_boost_round": settings.num_boost_round,
    }
    version, path = _write(out_dir / agent, booster, metadata)
    return TrainResult(version, path, threshold, test, validation, split, total - split)


def _choose_threshold(
    features: np.ndarray, labels: np.ndarray, names: list[str], settings: TrainSettings
) -> tuple[float, Metrics]:
    """Rolling-origin validation over the later part of the training data."""
    start = int(len(labels) * settings.validation_start)
    edges = np.linspace(start, len(labels), settings.validation_folds + 1).astype(int)
    scores: list[np.ndarray] = []
    truth: list[np.ndarray] = []
    for begin, end in itertools.pairwise(edges):
        if end <= begin or labels[:begin].min() == labels[:begin].max():
            continue
        model = _fit(features[:begin], labels[:begin], names, settings)
        scores.append(_scores(model, features[begin:end]))
        truth.append(labels[begin:end])
    if not scores:
        raise TrainingError("the validation slice has no fold with both classes before it")
    pooled, pooled_truth = np.concatenate(scores), np.concatenate(truth)
    _check_classes(pooled_truth, "the validation slice")
    cut = best_threshold(pooled_truth, pooled)
    threshold = float(np.clip(cut, settings.min_threshold, settings.max_threshold))
    return threshold, metrics(pooled_truth, (pooled >= threshold).astype(int))


def _check_classes(labels: np.ndarray, what: str) -> None:
    if labels.size == 0 or labels.min() == labels.max():
        raise TrainingError(
            f"{what} holds only one class ({int(labels.sum())} anomalies of {labels.size}); "
            "use more data or a different split"
        )


def _fit(
    features: np.ndarray, labels: np.ndarray, names: list[str], settings: TrainSettings
) -> lgb.Booster:
    dataset = lgb.Dataset(features, label=labels, feature_name=names, free_raw_data=True)
    return lgb.train(settings.lightgbm_params(), dataset, num_boost_round=settings.num_boost_round)


def _scores(booster: lgb.Booster, features: np.ndarray) -> np.ndarray:
    if features.shape[0] == 0:
        return np.zeros(0)
    return np.asarray(booster.predict(features), dtype=float)


def new_version() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _write(agent_dir: Path, booster: lgb.Booster, metadata: dict[str, Any]) -> tuple[str, Path]:
    agent_dir.mkdir(parents=True, exist_ok=True)
    version = new_version()
    metadata["version"] = version
    staging = agent_dir / f".staging-{version}"
    staging.mkdir()
    booster.save_model(str(staging / MODEL_FILE))
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    final = agent_dir / version
    os.replace(staging, final)
    return version, final
