"""Recently used threads' turns, kept in this replica's memory: a continued thread reads only its new turns.

Safe for the same reason as the Redis turn cache (storage/cache.py): a committed turn never changes, and the thread
row (version, turn count, state, tenant) is always read from the store, so a commit made on another replica is
seen as soon as it lands; only the turns already known are not read and parsed again. Without it, every
continuation read and validated the whole thread: with 16 threads continued at once on PostgreSQL, that was a fifth
of the daemon's CPU (py-spy, `exai stress storage`). Bounded by an estimate of the bytes held; the threads used
least recently are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from exai.storage.base import TurnRecord

TURN_OVERHEAD_BYTES = 600
"""What a parsed turn costs beside its text (the model object, its fields, the usage dict), measured roughly."""


def turn_bytes(turn: TurnRecord) -> int:
    return len(turn.content) + TURN_OVERHEAD_BYTES


class TurnMemory:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._threads: OrderedDict[str, tuple[tuple[TurnRecord, ...], int]] = OrderedDict()
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def known(self, thread_id: str) -> tuple[TurnRecord, ...]:
        """The thread's first turns as held here (turn k at index k - 1), or none."""
        entry = self._threads.get(thread_id)
        if entry is None:
            return ()
        self._threads.move_to_end(thread_id)
        return entry[0]

    def keep(self, thread_id: str, turns: Sequence[TurnRecord]) -> None:
        """Hold the thread's committed turns, numbered 1..n in order (anything else is not held)."""
        held, size = self._threads.pop(thread_id, ((), 0))
        self._bytes -= size
        if len(turns) < len(held):  # fewer than held (cannot happen: turns are never removed): count them afresh
            held, size = (), 0
        added = turns[len(held) :]
        if any(turn.seq != number for number, turn in enumerate(added, start=len(held) + 1)):
            return
        size += sum(turn_bytes(turn) for turn in added)
        if size > self.max_bytes:
            return
        self._threads[thread_id] = (tuple(turns), size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._threads.popitem(last=False)
            self._bytes -= dropped

    def forget(self, thread_id: str) -> None:
        _, size = self._threads.pop(thread_id, ((), 0))
        self._bytes -= size
