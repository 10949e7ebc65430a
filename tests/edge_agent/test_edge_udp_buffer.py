"""The UDP input's receive buffer, and the kernel drop count it exports."""

from __future__ import annotations

import os
import socket

from edge_agent.inputs.syslog_udp import kernel_drops, set_receive_buffer


def test_receive_buffer_is_raised_past_the_default() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = set_receive_buffer(sock, 8 * 1024 * 1024)
    assert granted > default
    assert granted >= 8 * 1024 * 1024 or os.geteuid() != 0


def test_kernel_drops_of_a_full_socket_are_counted() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        inode = os.fstat(receiver.fileno()).st_ino
        assert kernel_drops(inode) == 0
        for _ in range(500):
            sender.sendto(b"<14>overflowing the receive buffer", receiver.getsockname())
        assert kernel_drops(inode) > 0
