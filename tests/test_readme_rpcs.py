"""The README shows a buf curl and a grpcurl line for every RPC, with bodies that parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor

from gen.edgebot.v1 import anomaly_pb2, ingest_pb2, pipeline_pb2, storage_pb2

README = Path(__file__).resolve().parents[1] / "README.md"
CALL = re.compile(
    r"(?P<tool>buf curl|grpcurl) \$(?:BUF|GRPC) -d '(?P<body>[^']*)' \\\n\s+"
    r"(?:https://)?127\.0\.0\.1:\d+[/ ](?P<method>edgebot\.v1\.\w+/\w+)"
)


def methods() -> list[MethodDescriptor]:
    return [
        method
        for module in (ingest_pb2, pipeline_pb2, storage_pb2, anomaly_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def documented() -> dict[tuple[str, str], str]:
    return {
        (match["tool"], match["method"]): match["body"]
        for match in CALL.finditer(README.read_text())
    }


def json_objects(body: str) -> list[object]:
    """The messages of a body: one JSON object, or several in a row for a client stream."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while position < len(body):
        value, position = decoder.raw_decode(body, position)
        found.append(value)
        while position < len(body) and body[position] == " ":
            position += 1
    return found


@pytest.mark.parametrize("method", methods(), ids=lambda m: m.full_name)
def test_every_rpc_has_both_lines_with_a_body_of_its_request_type(
    method: MethodDescriptor,
) -> None:
    name = f"{method.containing_service.full_name}/{method.name}"
    calls = documented()
    for tool in ("buf curl", "grpcurl"):
        assert (tool, name) in calls, f"README has no {tool} line for {name}"
        messages = json_objects(calls[(tool, name)])
        assert len(messages) == 1 or method.client_streaming, name
        request_type = message_factory.GetMessageClass(method.input_type)
        for fields in messages:
            json_format.ParseDict(fields, request_type())
