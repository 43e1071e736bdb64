"""The AMQP bus: pika (BlockingConnection) to RabbitMQ, failing over across the brokers.

Why it is built this way:

* One durable **quorum** queue per topic, ``<name>.<topic>`` on the default exchange,
  declared by whoever gets there first: a cast made before any consumer exists waits in
  the queue. Quorum queues replicate with Raft and confirm a message only once a
  majority of the cluster has it on disk, so a confirmed cast survives a broker crash.
* ``cast`` publishes persistent messages with publisher confirms and ``mandatory``: it
  returns only once the broker has taken responsibility for the message. If the
  connection dies before the confirm, the message is published again on a new
  connection (at-least-once: handlers are idempotent and every consumer reconciles
  from the database anyway).
* pika's BlockingConnection is not thread-safe. Publishing goes through one connection
  guarded by a lock (API threads cast and call concurrently; a publish is short), each
  subscription has its own connection and thread, and replies to calls arrive through
  one more connection owned by a reply thread (an exclusive, server-named queue).
* pika sends heartbeats only while someone runs its I/O loop. A keeper thread pumps the
  idle publishing connection, and a consumer runs its handler on a helper thread while
  it keeps pumping its connection: a slow handler must not get its connection closed
  for missed heartbeats, which would hand its message to another consumer mid-work.
* A message is acknowledged only after its handler returned, so a consumer that dies
  mid-handler leaves the message to the next consumer. A handler that *raises* is
  acknowledged too (logged; the error goes back to a caller): redelivering a poison
  message forever would stop the topic, and the periodic reconciliation retries.
* Connecting tries each URL in order, round after round with a short backoff: casts
  and calls give up after a bounded wait (``retry_timeout``), consumers never (until
  stopped). Heartbeats (10 s) and short socket timeouts notice a dead broker quickly.

Known limit: a broker that accepts a publish but never confirms it (a quorum queue that
lost its majority) holds the cast until the connection fails; pika's blocking adapter
has no public per-publish timeout.

Seen with RabbitMQ 3.10.8 (Debian 12), and why the retries below exist: when two
connections declare a *new* quorum queue at the same moment (a consumer starting while
someone casts), the second one may get its first publish nacked, or its basic.consume
may crash its channel (connection closed with 541 INTERNAL_ERROR); both pass once the
queue's Raft member runs, so a nack is retried and a consumer reconnects. And a quorum
queue created less than about a second before the broker is SIGKILLed comes back empty
and leaderless (every publish nacked until an operator deletes it or triggers an
election): create the topic queues at deployment, not on the first cast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pika
import pika.exceptions

from core.common.bus.base import BusError, BusTimeout, Handler, Message

LOG = logging.getLogger(__name__)

# A message whose handler kills its consumer every time would otherwise be redelivered
# forever; after this many deliveries RabbitMQ drops it. Dropping a nudge is safe (the
# consumer reconciles from the database). Fixed at first declaration: changing queue
# arguments later makes the broker refuse the declaration (PRECONDITION_FAILED).
QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": 20}
PERSISTENT = 2  # delivery_mode
# Channel-close codes that another try cannot fix: access refused, and precondition
# failed (the queue exists with other arguments, e.g. as a classic queue).
_FATAL_CHANNEL_CODES = frozenset({403, 406})
# What pika raises when a connection or channel breaks (it wraps socket errors, but
# not always: OSError too).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:300]


def _encode(message: Message, what: str) -> bytes:
    try:
        return json.dumps(message, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise BusError(f"{what} is not JSON-serializable: {exc}") from None


class AmqpSubscription:
    """One consumer of one topic: a thread with its own connection (see ``AmqpBus.subscribe``)."""

    def __init__(self, bus: AmqpBus, topic: str, handler: Handler) -> None:
        self.bus = bus
        self.topic = topic
        self.queue_name = bus.queue_name(topic)
        self.handler = handler
        self._stop = threading.Event()
        self._consuming = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bus-{topic}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop consuming. A message whose handler is still running is not acknowledged:
        closing the connection returns it to the queue for the next consumer (the
        handler's thread is left to finish on its own; its result is dropped)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)
        self.bus._forget(self)

    def wait_consuming(self, timeout: float) -> bool:
        """True once the consumer is attached to its queue (for tests and health checks)."""
        return self._consuming.wait(timeout)

    @property
    def consuming(self) -> bool:
        return self._consuming.is_set()

    def _run(self) -> None:
        reconnect = False
        while not self._stop.is_set():
            try:
                conn, where = self.bus._connect(f"consumer {self.topic}", deadline=None,
                                                stop=self._stop, reconnect=reconnect)
            except BusError:
                return  # stopped while connecting
            try:
                self._consume(conn)
            except _CONNECTION_ERRORS as exc:
                if not self._stop.is_set():
                    LOG.warning("bus: consumer of %s lost its connection to %s (%s); "
                                "reconnecting", self.topic, where, _describe(exc))
                    reconnect = True
            except Exception:  # a bug here must not end consumption for good
                LOG.exception("bus: consumer of %s failed; reconnecting", self.topic)
                reconnect = True
                self._stop.wait(1.0)
            finally:
                self._consuming.clear()
                with contextlib.suppress(Exception):
                    if conn.is_open:
                        conn.close()

    def _consume(self, conn: Any) -> None:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=self.bus.prefetch)
        channel.queue_declare(self.queue_name, durable=True, arguments=QUEUE_ARGUMENTS)
        pending: deque[tuple[Any, Any, bytes]] = deque()
        channel.basic_consume(
            self.queue_name, lambda _ch, method, props, body: pending.append((method, props, body)))
        self._consuming.set()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)
            while pending and not self._stop.is_set():
                method, props, body = pending.popleft()
                self._deliver(conn, channel, method, props, body)

    def _deliver(self, conn: Any, channel: Any, method: Any, props: Any, body: bytes) -> None:
        """Run the handler on a helper thread while pumping the connection (heartbeats),
        then reply (for a call) and acknowledge."""
        outcome = _Outcome()
        worker = threading.Thread(target=self._handle, args=(conn, body, outcome),
                                  name=f"bus-{self.topic}-handler", daemon=True)
        worker.start()
        while not outcome.done.is_set():
            if self._stop.is_set():
                return  # not acknowledged: the broker requeues it when we disconnect
            try:
                # returns early when the handler wakes us (see _handle)
                conn.process_data_events(time_limit=0.2)
            except _CONNECTION_ERRORS:
                # No ack is possible any more; let the handler finish before reconnecting
                # so that its redelivery does not run alongside it.
                while not outcome.done.wait(0.2) and not self._stop.is_set():
                    pass
                raise
        if props.reply_to:
            reply: Message = ({"ok": True, "result": outcome.result or {}} if outcome.error is None
                              else {"ok": False, "error": outcome.error})
            try:
                payload = _encode(reply, "reply")
            except BusError as exc:
                payload = _encode({"ok": False, "error": str(exc)}, "reply")
            channel.basic_publish(
                "", props.reply_to, payload,
                pika.BasicProperties(correlation_id=props.correlation_id,
                                     content_type="application/json"))
        channel.basic_ack(method.delivery_tag)

    def _handle(self, conn: Any, body: bytes, outcome: _Outcome) -> None:
        try:
            message = json.loads(body)
            if not isinstance(message, dict):
                raise TypeError(f"expected a JSON object, got {type(message).__name__}")
            outcome.result = self.handler(message)
        except Exception as exc:  # a handler bug must not kill the topic's consumer
            LOG.exception("bus: handler for %s failed", self.topic)
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            outcome.done.set()
            # wake the consumer thread out of process_data_events: the only pika call
            # that is safe from another thread
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(_nothing)


def _nothing() -> None:
    pass


@dataclass
class _Outcome:
    done: threading.Event = field(default_factory=threading.Event)
    result: Message | None = None
    error: str | None = None


class _Publisher:
    """The process's publishing connection, shared by all threads under a lock."""

    def __init__(self, bus: AmqpBus) -> None:
        self.bus = bus
        self.lock = threading.Lock()
        self.conn: Any = None
        self.channel: Any = None
        self.where = ""
        self.declared: set[str] = set()
        self.lost = False  # a connection broke: the next connect is a reconnect
        self.keeper: threading.Thread | None = None

    def publish(self, queue_name: str, body: bytes, properties: Any, deadline: float) -> None:
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise BusError("no broker reachable in time (another thread is reconnecting)")
        try:
            self._publish(queue_name, body, properties, deadline)
        finally:
            self.lock.release()

    def _publish(self, queue_name: str, body: bytes, properties: Any, deadline: float) -> None:
        redeclared = nack_warned = False
        nacked_since: float | None = None
        backoff = 0.05
        while True:
            if self.bus._closed.is_set():
                raise BusError("bus closed")
            try:
                channel = self._channel(deadline)
                if queue_name not in self.declared:
                    channel.queue_declare(queue_name, durable=True, arguments=QUEUE_ARGUMENTS)
                    self.declared.add(queue_name)
                channel.basic_publish("", queue_name, body, properties, mandatory=True)
                return
            except pika.exceptions.UnroutableError:
                # the queue is gone (deleted by hand?): declare it again, once
                self.declared.discard(queue_name)
                if redeclared:
                    raise BusError(f"{queue_name}: message returned as unroutable") from None
                redeclared = True
                continue
            except pika.exceptions.NackError:
                # A quorum queue nacks while it cannot take the message: no leader yet,
                # e.g. when another connection is declaring the new queue at this very
                # moment (common: a consumer starting), or just after a broker restart.
                # That is transient: publish again. If it lasts, say so.
                now = time.monotonic()
                if nacked_since is None:
                    nacked_since = now
                    LOG.info("bus: %s refused a message for %s (nack); retrying",
                             self.where, queue_name)
                elif not nack_warned and now - nacked_since > 2.0:
                    nack_warned = True
                    LOG.warning("bus: %s keeps refusing messages for %s (nack; a quorum "
                                "queue without a leader?); retrying", self.where, queue_name)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._drop()
                if exc.reply_code in _FATAL_CHANNEL_CODES:
                    raise BusError(f"{queue_name}: {exc.reply_text}") from None
                self._lost(exc)
            except _CONNECTION_ERRORS as exc:
                self._drop()
                self._lost(exc)
            # publish again (on a new connection if it broke): an unconfirmed message
            # may be there twice, which is fine (at-least-once)
            if time.monotonic() + backoff >= deadline:
                raise BusError(f"{queue_name}: no broker confirmed the message in time"
                               + (" (nacked)" if nacked_since is not None else ""))
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    def _channel(self, deadline: float) -> Any:
        if self.conn is not None and self.conn.is_open and self.channel.is_open:
            return self.channel
        self._drop()
        conn, self.where = self.bus._connect("publisher", deadline=deadline,
                                             stop=self.bus._closed, reconnect=self.lost)
        try:
            channel = conn.channel()
            channel.confirm_delivery()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self.conn, self.channel, self.lost = conn, channel, False
        if self.keeper is None:
            self.keeper = threading.Thread(target=self._keep_alive, name="bus-heartbeat",
                                           daemon=True)
            self.keeper.start()
        return channel

    def _lost(self, exc: BaseException) -> None:
        if not self.lost:
            LOG.warning("bus: publishing connection to %s lost (%s); reconnecting",
                        self.where or "broker", _describe(exc))
        self.lost = True

    def _drop(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        self.declared.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                if conn.is_open:
                    conn.close()

    def _keep_alive(self) -> None:
        """Pump the idle connection so pika answers and sends heartbeats (it does so only
        inside its I/O loop); notice a dead broker before the next cast does."""
        interval = max(0.5, min(2.0, self.bus.heartbeat / 4)) if self.bus.heartbeat else 2.0
        while not self.bus._closed.wait(interval):
            if not self.lock.acquire(blocking=False):
                continue  # someone is publishing: that pumps the connection too
            try:
                if self.conn is not None:
                    try:
                        self.conn.process_data_events(time_limit=0)
                    except _CONNECTION_ERRORS as exc:
                        self._drop()
                        self._lost(exc)
            finally:
                self.lock.release()

    def close(self) -> None:
        if self.lock.acquire(timeout=10):
            try:
                self._drop()
            finally:
                self.lock.release()
        if self.keeper is not None and self.keeper is not threading.current_thread():
            self.keeper.join(timeout=5)


class _Replies:
    """Receives the replies to this process's calls: a thread with its own connection
    consuming an exclusive, server-named queue; waiting callers are matched by
    correlation id. If its connection breaks, the queue is gone with it: calls waiting
    then fail at once (BusError) instead of waiting out their timeout."""

    def __init__(self, bus: AmqpBus) -> None:
        self.bus = bus
        self.lock = threading.Lock()
        self.waiters: dict[str, queue.Queue[Message]] = {}
        self.queue_name: str | None = None
        self.ready = threading.Event()
        self.last_error = ""
        self.thread = threading.Thread(target=self._run, name="bus-replies", daemon=True)
        self.thread.start()

    def reply_queue(self, deadline: float) -> str:
        while True:
            name = self.queue_name
            if name is not None and self.ready.is_set():
                return name
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.bus._closed.is_set():
                raise BusError("no broker reachable for replies"
                               + (f" ({self.last_error})" if self.last_error else ""))
            self.ready.wait(min(remaining, 0.5))

    def register(self, correlation_id: str) -> queue.Queue[Message]:
        slot: queue.Queue[Message] = queue.Queue(maxsize=1)
        with self.lock:
            self.waiters[correlation_id] = slot
        return slot

    def unregister(self, correlation_id: str) -> None:
        with self.lock:
            self.waiters.pop(correlation_id, None)

    def _on_reply(self, _channel: Any, _method: Any, props: Any, body: bytes) -> None:
        with self.lock:
            slot = self.waiters.pop(props.correlation_id or "", None)
        if slot is None:
            return  # the caller gave up (timeout); a late or duplicate reply
        try:
            reply = json.loads(body)
            if not isinstance(reply, dict):
                raise TypeError(type(reply).__name__)
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "error": f"undecodable reply: {exc}"}
        slot.put(reply)

    def _fail_waiters(self, why: str) -> None:
        with self.lock:
            waiters, self.waiters = self.waiters, {}
        for slot in waiters.values():
            slot.put({"ok": False, "error": why, "lost": True})

    def _run(self) -> None:
        reconnect = False
        while not self.bus._closed.is_set():
            try:
                conn, where = self.bus._connect("replies", deadline=None, stop=self.bus._closed,
                                                reconnect=reconnect)
            except BusError:
                return
            try:
                channel = conn.channel()
                declared = channel.queue_declare("", exclusive=True, auto_delete=True)
                channel.basic_consume(declared.method.queue, self._on_reply, auto_ack=True)
                self.queue_name = declared.method.queue
                self.ready.set()
                while not self.bus._closed.is_set():
                    conn.process_data_events(time_limit=0.2)
            except _CONNECTION_ERRORS as exc:
                self.last_error = _describe(exc)
                if not self.bus._closed.is_set():
                    LOG.warning("bus: reply connection to %s lost (%s); reconnecting",
                                where, self.last_error)
                reconnect = True
            except Exception:  # a bug here must not end the replies for good
                LOG.exception("bus: reply consumer failed; reconnecting")
                reconnect = True
                self.bus._closed.wait(1.0)
            finally:
                self.ready.clear()
                self.queue_name = None
                self._fail_waiters("connection to the broker lost while waiting for the reply")
                with contextlib.suppress(Exception):
                    if conn.is_open:
                        conn.close()

    def close(self) -> None:
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5)


class AmqpBus:
    """The Bus protocol over RabbitMQ (see the module docstring for the design).

    ``urls`` are tried in order (``amqp://user:password@host:port/vhost``; query options
    such as ``heartbeat`` in a URL win over the defaults below). ``name`` names this
    process's connections (as shown by ``rabbitmqctl list_connections``); ``prefix``
    starts every queue name and must be the same in every process of one cloud (the
    API casts to the queue the agent consumes: a per-process prefix silently split
    them, found in the lab).
    ``retry_timeout`` bounds how long a cast keeps trying to reach a broker.
    ``amqps://`` URLs are TLS, the broker's certificate verified against ``ca_file``
    (None: the system's CAs) and its host name checked.
    """

    def __init__(self, urls: list[str], name: str = "haven", *, prefix: str = "haven",
                 heartbeat: int = 10,
                 connect_timeout: float = 3.0, retry_timeout: float = 30.0,
                 prefetch: int = 1, ca_file: str | None = None) -> None:
        if not urls:
            raise BusError("the amqp bus needs at least one broker URL")
        for url in urls:
            try:
                pika.URLParameters(url)
            except Exception as exc:
                raise BusError(f"bad broker URL: {_describe(exc)}") from None
        self.urls = list(urls)
        self.name = name
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.retry_timeout = retry_timeout
        self.prefetch = prefetch
        self.ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._publisher = _Publisher(self)
        self._replies: _Replies | None = None
        self._subscriptions: list[AmqpSubscription] = []

    def queue_name(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    # -- connections

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self.ca_file)
        return self._tls

    def _parameters(self, url: str, role: str, timeout: float) -> Any:
        params = pika.URLParameters(url)
        given = parse_qs(urlsplit(url).query)
        if params.ssl_options is not None:
            # pika's default for amqps names no server, so it could not check the name
            params.ssl_options = pika.SSLOptions(self._tls_context(), server_hostname=params.host)
        if "heartbeat" not in given:
            params.heartbeat = self.heartbeat
        if "socket_timeout" not in given:
            params.socket_timeout = timeout
        if "stack_timeout" not in given:
            params.stack_timeout = timeout * 2
        if "blocked_connection_timeout" not in given:
            # a broker in a resource alarm blocks publishers: give up rather than hang
            params.blocked_connection_timeout = self.retry_timeout
        params.connection_attempts = 1  # we go round the URL list ourselves
        params.client_properties = {
            "connection_name": f"{self.name} {role} (pid {os.getpid()})"}
        return params

    def _connect(self, role: str, *, deadline: float | None, stop: threading.Event,
                 reconnect: bool = False) -> tuple[Any, str]:
        """Open a connection to the first broker that answers, trying the URLs in order,
        round after round, until ``deadline`` (None: until ``stop`` is set)."""
        errors: dict[str, str] = {}
        backoff = 0.1
        started = time.monotonic()
        warned = False
        while True:
            for url in self.urls:
                if stop.is_set():
                    raise BusError("bus closed")
                timeout = self.connect_timeout
                if deadline is not None:
                    timeout = max(0.2, min(timeout, deadline - time.monotonic()))
                params = self._parameters(url, role, timeout)
                where = f"{params.host}:{params.port}"
                try:
                    conn = pika.BlockingConnection(params)
                except _CONNECTION_ERRORS as exc:
                    errors[where] = _describe(exc)
                    continue
                if reconnect or errors:
                    LOG.warning("bus: %s connected to %s after %.1f s%s", role, where,
                                time.monotonic() - started,
                                f" (unreachable: {'; '.join(errors)})" if errors else "")
                else:
                    LOG.debug("bus: %s connected to %s", role, where)
                return conn, where
            summary = "; ".join(f"{w}: {e}" for w, e in errors.items())
            if not warned:
                LOG.warning("bus: %s cannot reach any broker (%s); retrying", role, summary)
                warned = True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BusError(f"no broker reachable: {summary}")
            wait = backoff if remaining is None else min(backoff, remaining)
            if stop.wait(wait):
                raise BusError("bus closed")
            backoff = min(backoff * 2, 1.0)

    # -- the Bus protocol

    def cast(self, topic: str, message: Message) -> None:
        """Publish to ``topic``'s queue; return once the broker confirmed it (BusError if no
        broker did within ``retry_timeout``)."""
        self._check_open()
        body = _encode(message, "message")
        props = pika.BasicProperties(delivery_mode=PERSISTENT, content_type="application/json",
                                     message_id=uuid.uuid4().hex)
        self._publisher.publish(self.queue_name(topic), body, props,
                                time.monotonic() + self.retry_timeout)

    def call(self, topic: str, message: Message, timeout: float = 30.0) -> Message:
        """Publish a request with a correlation id and our reply queue, and wait for the
        reply. The request expires in the queue after ``timeout``: nobody handles a call
        whose caller already gave up."""
        self._check_open()
        deadline = time.monotonic() + timeout
        body = _encode(message, "message")
        replies = self._reply_channel()
        reply_to = replies.reply_queue(deadline)
        correlation_id = uuid.uuid4().hex
        slot = replies.register(correlation_id)
        try:
            props = pika.BasicProperties(
                delivery_mode=PERSISTENT, content_type="application/json",
                correlation_id=correlation_id, reply_to=reply_to, message_id=correlation_id,
                expiration=str(max(1, int(timeout * 1000))))
            self._publisher.publish(self.queue_name(topic), body, props, deadline)
            try:
                reply = slot.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BusTimeout(f"no reply from {topic} within {timeout}s") from None
        finally:
            replies.unregister(correlation_id)
        if reply.get("lost"):
            raise BusError(f"call to {topic}: {reply.get('error')}")
        if not reply.get("ok"):
            raise BusError(f"{topic} failed: {reply.get('error')}")
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    def subscribe(self, topic: str, handler: Handler) -> AmqpSubscription:
        """Consume ``topic`` on a thread of its own. Several subscriptions to one topic
        (in one process or many) share its messages as competing consumers."""
        self._check_open()
        sub = AmqpSubscription(self, topic, handler)
        with self._lock:
            self._subscriptions.append(sub)
        sub.start()
        return sub

    def ping(self) -> None:
        """Raise BusError unless some broker completes an AMQP handshake. A short-lived
        connection, so it never waits behind the publishing lock and a half-dead
        connection cannot make it lie."""
        self._check_open()
        errors = []
        for url in self.urls:
            params = self._parameters(url, "ping", self.connect_timeout)
            params.heartbeat = 0
            try:
                pika.BlockingConnection(params).close()
                return
            except _CONNECTION_ERRORS as exc:
                errors.append(f"{params.host}:{params.port}: {_describe(exc)}")
        raise BusError("no broker reachable: " + "; ".join(errors))

    def close(self) -> None:
        """Stop every subscription and the reply thread, and close the connections."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            subs, self._subscriptions = self._subscriptions, []
        for sub in subs:
            sub.stop()
        if self._replies is not None:
            self._replies.close()
        self._publisher.close()

    # -- helpers

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise BusError("bus closed")

    def _reply_channel(self) -> _Replies:
        with self._lock:
            if self._replies is None:
                self._replies = _Replies(self)
            return self._replies

    def _forget(self, sub: AmqpSubscription) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)
