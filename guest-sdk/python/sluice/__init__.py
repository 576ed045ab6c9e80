"""sluice: write Sluice event handlers in Python.

A handler is one function; componentize-py turns the module into a WASI 0.2 component of the
`sluice:platform/handler` world (see guest-sdk/python/README.md):

    from sluice import handler, Event, Response, Permanent, WitWorld

    @handler
    def handle(ev: Event) -> Response:
        order = ev.json()
        if not order.get("items"):
            raise Permanent("an order needs items")
        return Response.json({"items": len(order["items"])})

Raise `Retryable` for a failure worth retrying and `Permanent` for one that is not; any other
exception is retried like a crash. `publish`/`enqueue` emit with the handler's success;
`log`, `config` and `kv` are the platform's capabilities.
"""

import json as _json
import traceback as _traceback

import wit_world
from componentize_py_types import Err
from wit_world.imports import emit as _emit
from wit_world.imports import log as _log
from wit_world.imports import payload as _payload
from wit_world.imports import types as _types

__all__ = [
    "Event", "Response", "Retryable", "Permanent", "handler", "publish", "enqueue",
    "log", "config", "kv", "WitWorld",
]

# Bytes asked of the host per chunk when reading a large payload (a claim check).
_CHUNK = 1 << 20


class Retryable(Exception):
    """A transient failure: the attempt may be retried."""


class Permanent(Exception):
    """The event can never succeed (bad input, a business rule): do not retry."""


class Event:
    """One event handed to the handler: a job's input or a topic delivery (CloudEvents names)."""

    def __init__(self, raw):
        self._raw = raw
        self._data = None
        self.id = raw.id
        self.source = raw.source
        self.type = raw.type
        self.subject = raw.subject
        self.time = raw.time
        self.content_type = raw.content_type
        self.extensions = dict(raw.extensions)
        self.attempt = raw.attempt
        self.correlation_id = raw.correlation_id

    @property
    def data(self) -> bytes:
        """The event's data (a large payload is read from the host in chunks, once)."""
        if self._data is None:
            d = self._raw.data
            if isinstance(d, _types.Payload_Inline):
                self._data = bytes(d.value)
            else:
                buf = bytearray()
                while True:
                    chunk = _payload.read_blob(d.value.digest, len(buf), _CHUNK)
                    if not chunk:
                        break
                    buf += chunk
                self._data = bytes(buf)
        return self._data

    def text(self) -> str:
        """The data as UTF-8 text (`Permanent` when it is not)."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Permanent(f"the event's data is not UTF-8 text: {e}") from None

    def json(self):
        """The data parsed as JSON (`Permanent` when it is not)."""
        try:
            return _json.loads(self.data)
        except ValueError as e:
            raise Permanent(f"the event's data is not JSON: {e}") from None


class Response:
    """What a successful handler returns: bytes and their media type."""

    def __init__(self, data: bytes = b"", content_type=None):
        self.data = bytes(data)
        self.content_type = content_type

    @staticmethod
    def json(value) -> "Response":
        return Response(_json.dumps(value, separators=(",", ":")).encode(), "application/json")

    @staticmethod
    def text(value: str) -> "Response":
        return Response(value.encode("utf-8"), "text/plain; charset=utf-8")

    @staticmethod
    def bytes(value: bytes, content_type="application/octet-stream") -> "Response":
        return Response(value, content_type)


def _respond(result):
    if isinstance(result, Response):
        return _types.Response(data=result.data, content_type=result.content_type)
    if result is None:
        return _types.Response(data=b"", content_type=None)
    if isinstance(result, (bytes, bytearray)):
        return _types.Response(data=bytes(result), content_type="application/octet-stream")
    if isinstance(result, str):
        return _types.Response(data=result.encode("utf-8"), content_type="text/plain; charset=utf-8")
    r = Response.json(result)
    return _types.Response(data=r.data, content_type=r.content_type)


_HANDLER = None


def handler(fn):
    """Makes `fn(event) -> Response | dict | list | str | bytes | None` the component's handler."""
    global _HANDLER
    _HANDLER = fn
    return fn


def _run(raw):
    if _HANDLER is None:
        raise Err(_types.HandlerError_Permanent("no @handler in this component"))
    try:
        return _respond(_HANDLER(Event(raw)))
    except Permanent as e:
        raise Err(_types.HandlerError_Permanent(str(e) or "permanent failure"))
    except Retryable as e:
        raise Err(_types.HandlerError_Retryable(str(e) or "retryable failure"))
    except Err:
        raise
    except Exception as e:  # a bug in the handler: retried, like a crash
        _log.write(_log.Level.ERROR, _traceback.format_exc())
        raise Err(_types.HandlerError_Retryable(f"{type(e).__name__}: {e}"))


class WitWorld(wit_world.WitWorld):
    """The component's export; componentize-py finds it in the app module."""

    def handle(self, event):
        return _run(event)


def publish(topic: str, event_type: str, data, content_type=None):
    """Publishes an event to `topic`, committed with the handler's success (JSON unless bytes)."""
    data, content_type = _encode(data, content_type)
    _emit.publish(topic, event_type, data, content_type)


def enqueue(function: str, data, content_type=None, priority=None, delay_ms=None):
    """Enqueues a job of `function`, committed with the handler's success (JSON unless bytes)."""
    data, content_type = _encode(data, content_type)
    _emit.enqueue(function, data, content_type, _emit.EnqueueOptions(priority=priority, delay_ms=delay_ms))


def _encode(data, content_type):
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), content_type
    if isinstance(data, str):
        return data.encode("utf-8"), content_type or "text/plain; charset=utf-8"
    return _json.dumps(data, separators=(",", ":")).encode(), content_type or "application/json"


class log:
    """Lines for the job's captured log (never raises, whatever the volume)."""

    @staticmethod
    def info(message: str):
        _log.write(_log.Level.INFO, message)

    @staticmethod
    def warn(message: str):
        _log.write(_log.Level.WARN, message)

    @staticmethod
    def error(message: str):
        _log.write(_log.Level.ERROR, message)

    @staticmethod
    def debug(message: str):
        _log.write(_log.Level.DEBUG, message)


class config:
    """The manifest's `[config]` values and the function's secrets (`wasi:config/store`)."""

    @staticmethod
    def get(name: str):
        from wit_world.imports import store as _store
        return _store.get(name)


class kv:
    """The function's key-value state: reads see committed state plus this attempt's writes;
    writes commit with the handler's success, or never."""

    @staticmethod
    def _bucket():
        from wit_world.imports import store as _store
        return _store.open("default")

    @staticmethod
    def get(key: str):
        return kv._bucket().get(key)

    @staticmethod
    def set(key: str, value: bytes):
        kv._bucket().set(key, bytes(value))

    @staticmethod
    def delete(key: str):
        kv._bucket().delete(key)
