"""Recently used threads' turns, kept in this replica's memory: a continued thread reads only its new turns.

Safe for the same reason as the Redis turn cache (storage/cache.py): a committed turn never changes, and the thread
row (version, turn count, state, tenant) is always read from the store, so a commit made on another replica is
seen as soon as it lands; only the turns already known are not read and parsed again (the last one held is read
again and compared, so a history the store no longer has is dropped: see `Conversations._read`). Without it, every
continuation read and validated the whole thread: with 16 threads of up to 200 turns continued at once on
PostgreSQL, that was a fifth of the daemon's CPU (py-spy, `exai stress storage`). Bounded by an estimate of the
memory held; the threads used least recently are forgotten first.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Sequence

from exai.storage.base import TurnRecord

TURN_OVERHEAD_BYTES = 1_500
"""What a parsed turn costs beside its text and file paths (the model object, its fields and sets, the usage dict),
measured with tracemalloc on turns parsed from JSON as a store returns them: about 1,500 bytes."""


def turn_bytes(turn: TurnRecord) -> int:
    """The memory a held turn takes: its strings as Python stores them (1, 2 or 4 bytes a character, and for text
    that is not ASCII the UTF-8 copy a string keeps once it has been encoded, as parsing JSON does), plus the rest."""
    text = turn.content
    utf8 = 0 if text.isascii() else len(text.encode())
    paths = sum(sys.getsizeof(path) + 8 for path in turn.files)
    return sys.getsizeof(text) + utf8 + paths + TURN_OVERHEAD_BYTES


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
        """Hold the thread's committed turns, numbered 1..n in order (anything else, or none, is not held)."""
        held, size = self._threads.pop(thread_id, ((), 0))
        self._bytes -= size
        if len(turns) < len(held):  # a read that began before this replica's last commit: hold what it read
            held, size = (), 0
        added = turns[len(held) :]
        if not turns or any(turn.seq != number for number, turn in enumerate(added, start=len(held) + 1)):
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
