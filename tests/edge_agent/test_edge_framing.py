"""RFC 6587 framing and file line splitting: examples, then properties on random bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import MultilineConfig
from edge_agent.inputs.framing import Frame, Framer
from edge_agent.inputs.lines import Line, LineSplitter, MultilineJoiner


def frames_of(stream: bytes, limit: int = 1000, cuts: list[int] | None = None) -> list[Frame]:
    """Every frame of a whole stream, fed in pieces cut at the given positions."""
    framer = Framer(limit)
    frames: list[Frame] = []
    start = 0
    for cut in sorted(cuts or []):
        frames += framer.feed(stream[start:cut])
        start = cut
    frames += framer.feed(stream[start:])
    return frames + framer.finish()


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"<13>a\n<14>b\n", [b"<13>a", b"<14>b"]),
        (b"<13>crlf\r\n<14>nul\x00<15>end", [b"<13>crlf", b"<14>nul", b"<15>end"]),
        (b"5 <13>a12 <14>bbbbbbbb", [b"<13>a", b"<14>bbbbbbbb"]),
        (b"6 <13>\nx3 <1>\n<2>c\n", [b"<13>\nx", b"<1>", b"<2>c"]),
        (b"404 not found\n", [b"404 not found"]),
        (b"0 <13>zero\n", [b"0 <13>zero"]),
        (b"\n\n\r\n\x00<13>after blanks\n\n", [b"<13>after blanks"]),
    ],
    ids=["lf", "crlf-nul-eof", "octets", "octets-with-lf-inside", "digits", "zero", "blanks"],
)
def test_frames_detected_per_frame(stream: bytes, expected: list[bytes]) -> None:
    frames = frames_of(stream)
    assert [f.data for f in frames] == expected
    assert all(f.error is None for f in frames)
    # Byte by byte gives the same frames.
    assert frames_of(stream, cuts=list(range(len(stream)))) == frames


def test_oversize_frames_are_cut_and_the_stream_stays_in_step() -> None:
    stream = b"30 <" + b"x" * 29 + b"<13>next\n" + b"<14>" + b"y" * 50 + b"\n<15>last\n"
    frames = frames_of(stream, limit=10)
    assert frames == [
        Frame(b"<" + b"x" * 9, truncated=True, error="oversize"),
        Frame(b"<13>next"),
        Frame(b"<14>" + b"y" * 6, truncated=True, error="oversize"),
        Frame(b"<15>last"),
    ]


def test_stream_ending_inside_a_counted_frame_is_incomplete() -> None:
    assert frames_of(b"20 <13>short") == [Frame(b"<13>short", truncated=True, error="incomplete")]


def test_buffer_stays_bounded_on_an_endless_line() -> None:
    framer = Framer(100)
    frames = []
    for _ in range(1000):
        frames += framer.feed(b"z" * 1000)
        assert framer.buffered <= 1000 + 100
    assert frames == [Frame(b"z" * 100, truncated=True, error="oversize")]


MESSAGE = st.binary(max_size=60).map(lambda body: b"<13>" + body)


def encode(message: bytes, counted: bool) -> bytes:
    if counted:
        return b"%d %s" % (len(message), message)
    return message + b"\n"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(MESSAGE, st.booleans()), max_size=20),
    st.lists(st.integers(0, 2000), max_size=10),
    st.integers(8, 80),
)
def test_valid_streams_give_back_every_message(
    messages: list[tuple[bytes, bool]], cuts: list[int], limit: int
) -> None:
    # Delimited messages cannot contain their delimiters; counted ones may contain anything.
    messages = [
        (m if counted else m.replace(b"\n", b"").replace(b"\x00", b"").rstrip(b"\r"), counted)
        for m, counted in messages
    ]
    stream = b"".join(encode(m, counted) for m, counted in messages)
    frames = frames_of(stream, limit, [c for c in cuts if c <= len(stream)])
    assert [f.data for f in frames] == [m[:limit] for m, _ in messages]
    for frame, (message, _) in zip(frames, messages, strict=True):
        assert frame.truncated == (len(message) > limit)
        assert (frame.error == "oversize") == (len(message) > limit)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=12), st.integers(8, 200))
def test_random_bytes_never_raise_and_chunking_does_not_matter(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    whole = frames_of(stream, limit)
    assert frames_of(stream, limit, [c for c in cuts if c <= len(stream)]) == whole
    for frame in whole:
        assert 0 < len(frame.data) <= limit
        assert frame.error in (None, "oversize", "incomplete")
        assert frame.truncated == (frame.error is not None)
    assert sum(len(f.data) for f in whole) <= len(stream)


def split_all(data: bytes, cuts: list[int], limit: int) -> list[Line]:
    splitter = LineSplitter(limit, offset=100)
    lines: list[Line] = []
    start = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        lines += splitter.feed(data[start:cut])
        start = cut
    return lines + splitter.feed(data[start:]) + splitter.flush()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=12), st.integers(1, 100))
def test_line_splitter_on_random_bytes(data: bytes, cuts: list[int], limit: int) -> None:
    lines = split_all(data, cuts, limit)
    assert lines == split_all(data, [], limit)
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert len(lines) == len(expected)
    position = 100
    for line, original in zip(lines, expected, strict=True):
        # Offsets tile the data: every byte belongs to exactly one line.
        assert line.start == position
        position = line.end
        text = original.removesuffix(b"\r")
        assert line.data == text[:limit]
        assert line.truncated == (len(original) > limit)
    assert position == 100 + len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=40))
def test_multiline_joiner_keeps_every_line_in_order(lines: list[bytes]) -> None:
    config = MultilineConfig(start_pattern=r"\S", max_lines=5, max_bytes=100, timeout_s=1)
    joiner = MultilineJoiner(config, "utf-8")
    offset, records = 0, []
    for data in lines:
        line = Line(data, offset, offset + len(data) + 1)
        offset = line.end
        records += joiner.add(line, 0.0)
    records += joiner.flush()
    joined = [part for record in records for part in record.data.split(b"\n")]
    # Leading blank lines before any record are skipped; nothing else is lost.
    kept = lines[next((i for i, d in enumerate(lines) if d), len(lines)) :]
    assert joined == kept
    for record in records:
        assert not record.truncated
        assert len(record.data) <= 100
        assert record.data.count(b"\n") < 5
    assert [r.start for r in records] == sorted(r.start for r in records)
