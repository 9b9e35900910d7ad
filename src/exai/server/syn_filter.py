"""Stop a listening TCP socket from taking new connections, without resetting the ones it already holds.

Closing a listener resets every connection the kernel completed and queued in it. A server can accept what is
queued first, but a connection that completes between its last `accept` and the close is still reset, and a
client that had already sent its request (a balancer's POST) cannot know whether to repeat it. On a busy machine
the process can be preempted in that gap, and the gap becomes a time slice (one request in 12,874 behind nginx,
over six restarts, in one CI run).

`refuse_new_connections` attaches a socket filter (classic BPF, unprivileged, Linux) that drops every packet with
the SYN flag arriving at the listener: no new handshake starts. A client whose SYN was dropped sends it again about
a second later, finds the port closed and is refused (a balancer then tries another replica: nothing was sent).
Packets that complete handshakes already under way (ACKs without SYN, SYN cookies included) still pass: those
connections still join the queue, about one round trip later, so the caller waits that long before emptying it.
The filter is the socket's, not the descriptor's (a dup shares it, and so do connections accepted after it, where
it is harmless: an established connection receives no SYN): use it only on a listener this process alone holds,
as `exai serve` binds its own.
"""

from __future__ import annotations

import ctypes
import socket
import sys

from exai.observability.logging import get_logger

log = get_logger(__name__)

SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>; Python's socket module does not name it


class _Instruction(ctypes.Structure):
    """`struct sock_filter` from <linux/filter.h>."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    """`struct sock_fprog` from <linux/filter.h>."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


TCP_FLAGS_OFFSET = 13  # a TCP socket's filter sees the packet from its TCP header on
TCP_SYN = 0x02
DROP_SYN = (
    (0x30, 0, 0, TCP_FLAGS_OFFSET),  # BPF_LD | BPF_B | BPF_ABS: load the flags byte
    (0x45, 0, 1, TCP_SYN),  # BPF_JMP | BPF_JSET | BPF_K: SYN set? next instruction, else skip one
    (0x06, 0, 0, 0),  # BPF_RET | BPF_K: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: keep the whole packet
)


def refuse_new_connections(listener: socket.socket) -> bool:
    """Drop new connection attempts (SYN packets) at `listener` from now on; False where that is not possible
    (not Linux, not TCP, or the kernel refused), and the close that follows resets what arrives meanwhile."""
    if sys.platform != "linux" or listener.type != socket.SOCK_STREAM:
        return False
    if listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    instructions = (_Instruction * len(DROP_SYN))(*(_Instruction(*fields) for fields in DROP_SYN))
    program = _Program(len(DROP_SYN), instructions)
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(program))  # the kernel copies the program
    except OSError as exc:
        log.warning("listener_filter_refused", error=str(exc))
        return False
    return True
