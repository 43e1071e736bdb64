"""The in-process bus of the all-in-one: one queue and one worker thread per topic.

Same contract as AMQP within one process: casts are queued and handled in
order by the topic's worker; calls wait for the handler's reply. Messages
queued while nobody subscribes wait for the subscriber, as on a durable queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from core.common.bus.base import BusError, BusTimeout, Handler, Message

LOG = logging.getLogger(__name__)


@dataclass
class _Envelope:
    message: Message
    reply: queue.Queue[tuple[bool, Message | str]] | None = None


@dataclass
class _Topic:
    queue: queue.Queue[_Envelope | None] = field(default_factory=queue.Queue)
    worker: threading.Thread | None = None


class LocalSubscription:
    def __init__(self, bus: LocalBus, topic: str) -> None:
        self.bus = bus
        self.topic = topic

    def stop(self) -> None:
        self.bus._stop_topic(self.topic)


class LocalBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    def _topic(self, name: str) -> _Topic:
        with self._lock:
            if self._closed:
                raise BusError("bus closed")
            return self._topics.setdefault(name, _Topic())

    def cast(self, topic: str, message: Message) -> None:
        self._topic(topic).queue.put(_Envelope(dict(message)))

    def call(self, topic: str, message: Message, timeout: float = 30.0) -> Message:
        reply: queue.Queue[tuple[bool, Message | str]] = queue.Queue(maxsize=1)
        self._topic(topic).queue.put(_Envelope(dict(message), reply))
        try:
            ok, value = reply.get(timeout=timeout)
        except queue.Empty:
            raise BusTimeout(f"no reply from {topic} within {timeout}s") from None
        if not ok:
            raise BusError(f"{topic} failed: {value}")
        assert isinstance(value, dict)
        return value

    def subscribe(self, topic: str, handler: Handler) -> LocalSubscription:
        t = self._topic(topic)
        with self._lock:
            if t.worker is not None and t.worker.is_alive():
                raise BusError(f"topic {topic} already has a consumer in this process")
            t.worker = threading.Thread(target=self._run, args=(topic, t, handler),
                                        name=f"bus-{topic}", daemon=True)
            t.worker.start()
        return LocalSubscription(self, topic)

    def _run(self, topic: str, t: _Topic, handler: Handler) -> None:
        while True:
            envelope = t.queue.get()
            if envelope is None:
                return
            try:
                result = handler(envelope.message)
                if envelope.reply is not None:
                    envelope.reply.put((True, result or {}))
            except Exception as exc:  # a handler bug must not kill the topic's worker
                LOG.exception("handler for %s failed", topic)
                if envelope.reply is not None:
                    envelope.reply.put((False, f"{type(exc).__name__}: {exc}"))

    def _stop_topic(self, topic: str) -> None:
        with self._lock:
            t = self._topics.get(topic)
        if t is not None and t.worker is not None:
            t.queue.put(None)
            t.worker.join(timeout=10)
            t.worker = None

    def ping(self) -> None:
        if self._closed:
            raise BusError("bus closed")

    def close(self) -> None:
        for name in list(self._topics):
            self._stop_topic(name)
        with self._lock:
            self._closed = True
