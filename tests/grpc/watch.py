"""A WatchChanges reader on a thread, for the change feed's tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from registry.v1 import change_pb2
from registry.v1 import population_service_pb2 as pb


class Watcher:
    """A WatchChanges stream read on a thread, collecting events as they arrive."""

    def __init__(self, population: Any, agency: Any, after: int = 0, types: tuple = ()):
        self.events: list[change_pb2.ChangeEvent] = []
        self.error: grpc.RpcError | None = None
        self._call = population.WatchChanges(
            pb.WatchChangesRequest(after_sequence=after, types=types),
            metadata=agency.metadata(),
        )
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    self.events.append(response.event)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc

    def about(self, pins: set[str]) -> list[tuple[int, str]]:
        with self._lock:
            return [(e.type, e.pin) for e in self.events if e.pin in pins]

    def wait_for(self, pins: set[str], count: int, timeout: float = 5.0) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.error is None, self.error
            found = self.about(pins)
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"only {self.about(pins)} of {count} events within {timeout} s")

    def last_sequence(self) -> int:
        with self._lock:
            return self.events[-1].sequence if self.events else 0

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
