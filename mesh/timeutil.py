"""Conversions between protobuf Timestamps, datetimes and integer nanoseconds."""

from __future__ import annotations

import datetime as dt
import time

from google.protobuf.timestamp_pb2 import Timestamp

NS_PER_S = 1_000_000_000


def now_ns() -> int:
    return time.time_ns()


def ts_to_ns(ts: Timestamp) -> int:
    return ts.seconds * NS_PER_S + ts.nanos


def ns_to_ts(ns: int, out: Timestamp | None = None) -> Timestamp:
    target = out if out is not None else Timestamp()
    target.seconds, target.nanos = divmod(ns, NS_PER_S)
    return target


def is_set(ts: Timestamp) -> bool:
    return ts.seconds != 0 or ts.nanos != 0


def ns_to_datetime(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / NS_PER_S, dt.UTC)


def datetime_to_ns(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime: a time zone is required")
    return int(value.timestamp()) * NS_PER_S + value.microsecond * 1000


def ns_to_iso(ns: int) -> str:
    return ns_to_datetime(ns).isoformat(timespec="microseconds").replace("+00:00", "Z")
