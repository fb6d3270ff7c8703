"""The bounded first-in-first-out queue of waiting jobs, with the batch hook.

Not thread-safe by itself: :class:`~vfrt.serve.service.JobService` holds its lock around every
call, so a job's state and its place in the queue always change together.
"""
from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

from vfrt.serve.errors import QueueFull

T = TypeVar("T")


class JobQueue(Generic[T]):
    """Waiting items, oldest first, at most ``capacity`` of them (running ones are not in it)."""

    def __init__(self, capacity: int, retry_after_s: int = 30):
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._items: list[T] = []

    def __len__(self) -> int:
        return len(self._items)

    def check_room(self) -> None:
        """Raise :class:`QueueFull` (with a message and a retry hint) when no item can be added."""
        if len(self._items) >= self.capacity:
            raise QueueFull(f"the job queue is full ({len(self._items)} jobs waiting, at most {self.capacity}); "
                            f"try again in about {self.retry_after_s} s", self.retry_after_s)

    def put(self, item: T, *, bounded: bool = True) -> None:
        """Append ``item``; ``bounded=False`` admits it over capacity (jobs restored at a restart
        were admitted once already)."""
        if bounded:
            self.check_room()
        self._items.append(item)

    def remove(self, item: T) -> bool:
        """Take ``item`` out (a cancelled job); False if it was not waiting."""
        try:
            self._items.remove(item)
        except ValueError:
            return False
        return True

    def position(self, item: T) -> int | None:
        """1 for the next item to run; None if not waiting."""
        try:
            return self._items.index(item) + 1
        except ValueError:
            return None

    def take(self, max_items: int, key: Callable[[T], Hashable]) -> list[T]:
        """The oldest item and up to ``max_items - 1`` later ones with the same ``key`` (in queue order),
        removed from the queue: compatible jobs a worker runs together. Empty if nothing waits."""
        if not self._items:
            return []
        first = self._items[0]
        wanted = key(first)
        batch = [first] + [it for it in self._items[1:] if key(it) == wanted][:max_items - 1]
        self._items = [it for it in self._items if not any(it is b for b in batch)]
        return batch
