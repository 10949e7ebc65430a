"""What passing events on costs a hop, per event: as messages (copied into the next request)
or as their encoded bytes (the Encoded views of encoded.proto).

Run: .venv/bin/python -m bench.forwarding_cost [--events 500] [--rounds 5]

Events are the benchmark's syslog after the edge parser and the default pipeline, as they
reach storage. Each figure is the best of ``--rounds`` (wall time of 20 requests in a row:
other load only slows a round), for one request of ``--events`` events, per event:

- agent: a batch from spooled bytes, parsed into EventBatch and wrapped in a StreamRequest,
  then serialized; against the same batch as EncodedStreamRequest;
- pipeline answer: a ProcessResponse built from the passed events, wrapped in a
  ProcessStreamResponse, then serialized; against each event serialized once into an
  EncodedProcessStreamResponse;
- ingest return: the pipeline's answer parsed, its events copied into a WriteRequest,
  serialized; against the same with the Encoded views (nothing parsed or copied).
"""

from __future__ import annotations

import argparse
import asyncio
import timeit
from collections.abc import Callable

from bench.limit import stored_events
from gen.edgebot.v1 import encoded_pb2, event_pb2, ingest_pb2, pipeline_pb2, storage_pb2

REPEATS = 20


def best_us_per_event(work: Callable[[], object], events: int, rounds: int) -> float:
    best = min(timeit.repeat(work, number=REPEATS, repeat=rounds))
    return best / REPEATS / events * 1e6


def costs(events: list[event_pb2.Event], rounds: int) -> list[tuple[str, float, float]]:
    spooled = [event.SerializeToString() for event in events]
    answer = pipeline_pb2.ProcessStreamResponse()
    answer.response.events.extend(events)
    answer_bytes = answer.SerializeToString()

    def agent_as_messages() -> bytes:
        batch = event_pb2.EventBatch(batch_id="b", agent_id="site-a", seq=1)
        for data in spooled:
            batch.events.add().MergeFromString(data)
        return ingest_pb2.StreamRequest(batch=batch).SerializeToString()

    def agent_as_bytes() -> bytes:
        request = encoded_pb2.EncodedStreamRequest()
        request.batch.batch_id, request.batch.agent_id, request.batch.seq = "b", "site-a", 1
        request.batch.events.extend(spooled)
        return request.SerializeToString()

    def pipeline_as_messages() -> bytes:
        response = pipeline_pb2.ProcessResponse(events=events)
        return pipeline_pb2.ProcessStreamResponse(response=response).SerializeToString()

    def pipeline_as_bytes() -> bytes:
        message = encoded_pb2.EncodedProcessStreamResponse()
        message.response.events.extend([event.SerializeToString() for event in events])
        return message.SerializeToString()

    def ingest_as_messages() -> bytes:
        parsed = pipeline_pb2.ProcessStreamResponse.FromString(answer_bytes)
        write = storage_pb2.WriteRequest()
        write.batch.batch_id = "b"
        write.batch.events.extend(parsed.response.events)
        return storage_pb2.WriteStreamRequest(writes=[write]).SerializeToString()

    def ingest_as_bytes() -> bytes:
        parsed = encoded_pb2.EncodedProcessStreamResponse.FromString(answer_bytes)
        write = encoded_pb2.EncodedWriteRequest()
        write.batch.batch_id = "b"
        write.batch.events.extend(parsed.response.events)
        return encoded_pb2.EncodedWriteStreamRequest(writes=[write]).SerializeToString()

    count = len(events)
    pairs = [
        ("agent: batch from the spool", agent_as_messages, agent_as_bytes),
        ("pipeline: the answer", pipeline_as_messages, pipeline_as_bytes),
        ("ingest: the answer on to storage", ingest_as_messages, ingest_as_bytes),
    ]
    return [
        (name, best_us_per_event(old, count, rounds), best_us_per_event(new, count, rounds))
        for name, old, new in pairs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500, help="events per request")
    parser.add_argument("--rounds", type=int, default=5, help="best of this many")
    args = parser.parse_args()
    events = asyncio.run(stored_events(args.events))
    size = sum(event.ByteSize() for event in events) / len(events)
    print(f"{len(events)} events per request, {size:.0f} bytes each on average")
    print(f"{'hop':36} {'as messages':>14} {'as bytes':>10}   µs per event")
    for name, as_messages, as_bytes in costs(events, args.rounds):
        print(f"{name:36} {as_messages:14.2f} {as_bytes:10.2f}")


if __name__ == "__main__":
    main()
