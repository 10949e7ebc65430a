"""QueryEvents filters and pagination, and AggregateEvents buckets and grouping."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from storage_helpers import (
    BASE_NS,
    StorageClients,
    Store,
    event,
    events,
    ids,
    query_all,
    start_storage,
    write_request,
)
from support import Pki

from gen.edgebot.v1 import event_pb2, storage_pb2
from mesh.timeutil import NS_PER_S, ns_to_ts, ts_to_ns

NEWEST = storage_pb2.SORT_ORDER_NEWEST_FIRST
OLDEST = storage_pb2.SORT_ORDER_OLDEST_FIRST
MINUTE_NS = 60 * NS_PER_S
# min_severity (field 7) = 42, a value no Severity has, decoded from the wire.
UNKNOWN_MIN_SEVERITY = storage_pb2.EventFilter.FromString(b"\x38\x2a")


def mixed_events() -> list[event_pb2.Event]:
    """Events that differ from event 0 in exactly one field each."""
    return [
        event(0),
        event(1, type="snmp"),
        event(2, source="site-b/syslog-udp"),
        event(3, host="switch-9"),
        event(4, service="cron"),
        event(5, severity=event_pb2.SEVERITY_ERROR),
        event(6, severity=event_pb2.SEVERITY_WARNING),
        event(7, severity=event_pb2.SEVERITY_UNSPECIFIED),
        event(8, message="Disk FULL on /var (100%_used)"),
        event(9, tags={"geo.country": "NL", "site": "a"}),
        event(10, attributes={"net.src_ip": "10.0.0.1", "net": "x"}),
        event(11, attributes={"net.src_ip": "10.0.0.2"}),
    ]


async def selected(clients: StorageClients, **filter_fields: Any) -> list[int]:
    request = storage_pb2.QueryEventsRequest(
        filter=storage_pb2.EventFilter(**filter_fields), order=OLDEST
    )
    return [
        int(found.id.removeprefix("ev-")) for found in await query_all(clients.operator, request)
    ]


@pytest.fixture
async def mixed(clients: StorageClients) -> StorageClients:
    await clients.service.Write(write_request(mixed_events()))
    return clients


async def test_no_filter_selects_everything(mixed: StorageClients) -> None:
    assert await selected(mixed) == list(range(12))


async def test_time_range_is_start_inclusive_end_exclusive(mixed: StorageClients) -> None:
    start, end = ns_to_ts(BASE_NS + 3 * NS_PER_S), ns_to_ts(BASE_NS + 6 * NS_PER_S)
    assert await selected(mixed, start_time=start, end_time=end) == [3, 4, 5]


async def test_types(mixed: StorageClients) -> None:
    assert await selected(mixed, types=["snmp", "gps"]) == [1]


async def test_sources(mixed: StorageClients) -> None:
    assert await selected(mixed, sources=["site-b/syslog-udp"]) == [2]


async def test_hosts(mixed: StorageClients) -> None:
    assert await selected(mixed, hosts=["switch-9"]) == [3]


async def test_services(mixed: StorageClients) -> None:
    assert await selected(mixed, services=["cron", "ntpd"]) == [4]


async def test_min_severity_selects_at_least_as_severe(mixed: StorageClients) -> None:
    assert await selected(mixed, min_severity=event_pb2.SEVERITY_WARNING) == [5, 6]
    assert await selected(mixed, min_severity=event_pb2.SEVERITY_ERROR) == [5]


async def test_text_is_a_case_insensitive_literal_substring(mixed: StorageClients) -> None:
    assert await selected(mixed, text="disk full") == [8]
    assert await selected(mixed, text="100%_USED") == [8]
    assert await selected(mixed, text="100%x") == []


async def test_tags_with_dotted_keys(mixed: StorageClients) -> None:
    assert await selected(mixed, tags={"geo.country": "NL"}) == [9]
    assert await selected(mixed, tags={"geo.country": "NL", "site": "b"}) == []


async def test_attributes_with_dotted_keys(mixed: StorageClients) -> None:
    assert await selected(mixed, attributes={"net.src_ip": "10.0.0.1"}) == [10]
    assert await selected(mixed, attributes={"net": "x"}) == [10]


async def test_conditions_combine(mixed: StorageClients) -> None:
    assert await selected(mixed, hosts=["router-1"], min_severity=event_pb2.SEVERITY_ERROR) == [5]


async def write_many(clients: StorageClients, numbers: range) -> None:
    for start in range(numbers.start, numbers.stop, 100):
        chunk = range(start, min(start + 100, numbers.stop))
        await clients.service.Write(write_request(events(chunk)))


@pytest.mark.parametrize("order", [NEWEST, OLDEST])
async def test_pages_yield_every_event_once_in_order(
    clients: StorageClients, order: storage_pb2.SortOrder.ValueType
) -> None:
    await write_many(clients, range(250))
    request = storage_pb2.QueryEventsRequest(page_size=100, order=order)
    sizes = []
    found: list[event_pb2.Event] = []
    while True:
        page = await clients.operator.QueryEvents(request)
        sizes.append(len(page.events))
        found.extend(page.events)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token

    expected = ids(events(range(250)))
    assert sizes == [100, 100, 50]
    assert ids(found) == (expected if order == OLDEST else expected[::-1])


async def test_events_with_equal_times_page_by_id(clients: StorageClients) -> None:
    same_time = [event(n, ts_ns=BASE_NS) for n in range(7)]
    await clients.service.Write(write_request(same_time))
    request = storage_pb2.QueryEventsRequest(page_size=3, order=OLDEST)
    assert ids(await query_all(clients.operator, request)) == ids(same_time)


async def test_paging_while_newer_events_arrive(clients: StorageClients) -> None:
    await write_many(clients, range(250))
    request = storage_pb2.QueryEventsRequest(page_size=100, order=OLDEST)
    first = await clients.operator.QueryEvents(request)
    await clients.service.Write(write_request(events(range(250, 300))))
    request.page_token = first.next_page_token

    rest = await query_all(clients.operator, request)

    assert ids([*first.events, *rest]) == ids(events(range(300)))


async def test_newest_first_paging_ignores_events_written_meanwhile(
    clients: StorageClients,
) -> None:
    await write_many(clients, range(250))
    request = storage_pb2.QueryEventsRequest(page_size=100, order=NEWEST)
    first = await clients.operator.QueryEvents(request)
    await clients.service.Write(write_request(events(range(250, 300))))
    request.page_token = first.next_page_token

    rest = await query_all(clients.operator, request)

    assert ids([*first.events, *rest]) == ids(events(range(250)))[::-1]


async def test_page_size_is_capped_and_defaults(pki: Pki, store: Store) -> None:
    query = {"max_page_size": 20, "default_page_size": 10}
    async with (
        start_storage(pki, store, query=query) as app,
        StorageClients.connect(pki, app) as clients,
    ):
        await clients.service.Write(write_request(events(range(30))))
        capped = await clients.operator.QueryEvents(storage_pb2.QueryEventsRequest(page_size=50))
        default = await clients.operator.QueryEvents(storage_pb2.QueryEventsRequest())
    assert (len(capped.events), len(default.events)) == (20, 10)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_token": "not a token!"}, "page_token"),
        ({"page_token": "eyJvIjoxfQ"}, "page_token"),
        ({"page_size": -1}, "page_size"),
        ({"filter": UNKNOWN_MIN_SEVERITY}, "filter.min_severity"),
        ({"filter": storage_pb2.EventFilter(tags={'a"b': "x"})}, 'filter.tags[a"b]'),
    ],
)
async def test_bad_requests_name_the_field(
    clients: StorageClients, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.operator.QueryEvents(storage_pb2.QueryEventsRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}: ")


async def test_a_page_token_is_bound_to_its_sort_order(clients: StorageClients) -> None:
    await clients.service.Write(write_request(events(range(3))))
    page = await clients.operator.QueryEvents(
        storage_pb2.QueryEventsRequest(page_size=1, order=OLDEST)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.operator.QueryEvents(
            storage_pb2.QueryEventsRequest(page_token=page.next_page_token, order=NEWEST)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_aggregate_counts_per_bucket_aligned_to_the_epoch(clients: StorageClients) -> None:
    minute_start = BASE_NS - BASE_NS % MINUTE_NS
    offsets_s = [10, 30, 50, 70, 90, 110, 130]
    timed = [event(n, ts_ns=minute_start + s * NS_PER_S) for n, s in enumerate(offsets_s)]
    await clients.service.Write(write_request(timed))

    answer = await clients.operator.AggregateEvents(
        storage_pb2.AggregateEventsRequest(bucket=Duration(seconds=60))
    )
    found = [(ts_to_ns(c.bucket_start_time), c.key, c.count) for c in answer.counts]
    assert found == [
        (minute_start, "", 3),
        (minute_start + MINUTE_NS, "", 3),
        (minute_start + 2 * MINUTE_NS, "", 1),
    ]


async def test_aggregate_defaults_to_hour_buckets(clients: StorageClients) -> None:
    hour_ns = 3600 * NS_PER_S
    hour_start = BASE_NS - BASE_NS % hour_ns
    await clients.service.Write(
        write_request([event(1, ts_ns=hour_start + 5), event(2, ts_ns=hour_start + hour_ns + 5)])
    )
    answer = await clients.operator.AggregateEvents(storage_pb2.AggregateEventsRequest())
    starts = [c.bucket_start_time.seconds * NS_PER_S for c in answer.counts]
    assert starts == [hour_start, hour_start + hour_ns]


@pytest.mark.parametrize(
    ("group_by", "keys"),
    [
        (storage_pb2.GROUP_BY_TYPE, ["snmp", "syslog"]),
        (storage_pb2.GROUP_BY_SOURCE, ["site-a/syslog-udp", "site-b/syslog-udp"]),
        (storage_pb2.GROUP_BY_SERVICE, ["cron", "sshd"]),
        (storage_pb2.GROUP_BY_SEVERITY, ["", "3", "6"]),
        (storage_pb2.GROUP_BY_HOST, ["router-1", "switch-9"]),
    ],
)
async def test_aggregate_groups(
    clients: StorageClients, group_by: storage_pb2.GroupBy.ValueType, keys: list[str]
) -> None:
    await clients.service.Write(
        write_request(
            [
                event(0, type="snmp", source="site-b/syslog-udp", service="cron"),
                event(1, host="switch-9", severity=event_pb2.SEVERITY_ERROR),
                event(2, severity=event_pb2.SEVERITY_UNSPECIFIED),
            ]
        )
    )
    answer = await clients.operator.AggregateEvents(
        storage_pb2.AggregateEventsRequest(bucket=Duration(seconds=3600), group_by=group_by)
    )
    assert sorted(c.key for c in answer.counts) == keys
    assert sum(c.count for c in answer.counts) == 3


async def test_aggregate_honours_the_filter(clients: StorageClients) -> None:
    await clients.service.Write(write_request([event(0, type="snmp"), event(1), event(2)]))
    answer = await clients.operator.AggregateEvents(
        storage_pb2.AggregateEventsRequest(
            filter=storage_pb2.EventFilter(types=["syslog"]), group_by=storage_pb2.GROUP_BY_TYPE
        )
    )
    assert [(c.key, c.count) for c in answer.counts] == [("syslog", 2)]


async def test_aggregate_refuses_a_negative_bucket(clients: StorageClients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.operator.AggregateEvents(
            storage_pb2.AggregateEventsRequest(bucket=Duration(seconds=-5))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("bucket: ")


async def test_a_page_ends_early_at_its_byte_limit(pki: Pki, store: Store) -> None:
    async with (
        start_storage(pki, store, query={"max_page_bytes": 1024}) as app,
        StorageClients.connect(pki, app) as clients,
    ):
        written = events(range(5), message="y" * 400)
        await clients.service.Write(write_request(written))
        request = storage_pb2.QueryEventsRequest(order=OLDEST)
        sizes = []
        found: list[event_pb2.Event] = []
        while True:
            page = await clients.operator.QueryEvents(request)
            sizes.append(len(page.events))
            found.extend(page.events)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    assert sizes == [2, 2, 1]
    assert ids(found) == ids(written)
