"""`edgebot train`: train an agent's LightGBM model into a versioned models folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly_svc.models.datasets import DatasetError, load
from anomaly_svc.models.train import TrainingError, train


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an agent's model (chronological split; prints held-out P/R/F1)",
        description="Trains a LightGBM model for an agent and writes model.txt and "
        "metadata.json into OUT/<agent>/<version>/, where a running anomaly service with "
        "models.dir = OUT picks it up.",
    )
    parser.add_argument("--agent", default="logpattern", help="agent the model is for")
    parser.add_argument("--data", type=Path, required=True, help="log file, folder or export")
    parser.add_argument("--format", choices=("bgl", "hdfs", "export"), required=True)
    parser.add_argument(
        "--labels",
        type=Path,
        help="label CSV (hdfs: BlockId,Label; export: id,...,label, e.g. an export's labels "
        "part); .gz is read through gzip",
    )
    parser.add_argument(
        "--unlabelled",
        choices=("error", "normal"),
        default="error",
        help="export events no label names: refuse (default) or count as normal",
    )
    parser.add_argument("--out", type=Path, required=True, help="models folder")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    try:
        dataset = load(args.data, args.format, args.labels, args.unlabelled)
        result = train(args.agent, dataset, args.out)
    except (DatasetError, TrainingError) as exc:
        print(f"edgebot train: {exc}", file=sys.stderr)
        return 2
    test = result.test
    print(f"model {args.agent}/{result.version} written to {result.path}")
    print(f"train {result.train_size} / held-out {result.test_size} ({dataset.mode}s), "
          f"threshold {result.threshold:.4f}")  # fmt: skip
    print(
        f"held-out precision {test.precision:.3f} recall {test.recall:.3f} F1 {test.f1:.3f} "
        f"(TP {test.true_positives}, FP {test.false_positives}, FN {test.false_negatives})"
    )
    return 0
