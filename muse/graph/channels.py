"""Bounded hand-over between threads with the graph's real-time policies.

`latest`: one slot; a new item replaces an unread one and the drop is counted
(live video never waits for a slow consumer). `queue: N`: up to N items in
order; the producer waits while it is full (nothing is dropped).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

_CLOSED = object()


class ChannelClosed(Exception):
    """The producer ended (end of stream or shutdown) and nothing is left to read."""


class Channel:
    def __init__(self, policy: str = "latest", size: int = 1, on_drop: Callable[[int], None] | None = None) -> None:
        if policy not in ("latest", "queue"):
            raise ValueError(f"unknown policy {policy!r}")
        self.policy = policy
        self.size = 1 if policy == "latest" else max(1, size)
        self.on_drop = on_drop
        self.drops = 0
        self._items: deque[Any] = deque()
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Any, stop: threading.Event | None = None, give_up: Callable[[], bool] | None = None) -> bool:
        """Hand an item over; False if the channel was closed (the consumer is gone), or, while waiting for
        room in a queue, `give_up()` turned true (the consumer is stalled: the item is dropped and counted)."""
        with self._cond:
            if self.policy == "latest":
                if self._closed:
                    return False
                if self._items:
                    self._items.clear()
                    self.drops += 1
                    if self.on_drop:
                        self.on_drop(1)
                self._items.append(item)
                self._cond.notify_all()
                return True
            while len(self._items) >= self.size and not self._closed:
                if stop is not None and stop.is_set():
                    return False
                if give_up is not None and give_up():
                    self.drops += 1
                    if self.on_drop:
                        self.on_drop(1)
                    return False
                self._cond.wait(0.05)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def offer(self, item: Any) -> bool:
        """Hand an item over without waiting: a full queue drops it (counted). For a consumer that is stalled."""
        with self._cond:
            if self._closed:
                return False
            if self.policy == "queue" and len(self._items) >= self.size:
                self.drops += 1
                if self.on_drop:
                    self.on_drop(1)
                return False
        return self.put(item)

    def get(self, timeout: float | None = None) -> Any:
        """The next item (for `latest`: the newest). Raises ChannelClosed or TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    raise ChannelClosed
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self._cond.wait(remaining if remaining is not None else 0.1)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self) -> Any:
        with self._cond:
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            if self._closed:
                raise ChannelClosed
            raise TimeoutError

    def wait_taken(self, timeout: float) -> bool:
        """Wait until the channel is empty (its items taken) or closed, at most `timeout` seconds; True if it is.
        For a producer that makes an item only once the last one was taken (no polling)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items or self._closed, timeout)

    def close(self) -> None:
        """No more items; readers drain what is left, then get ChannelClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
