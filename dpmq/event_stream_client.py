"""The Server-Sent Events client under ``dpmq.client.Consumer(transport="sse")``.

It speaks the broker's event stream (``GET /ConsumersConn/{topic}/{consumerId}`` with
``Accept: text/event-stream``) over the standard library's ``http.client``, and shows the consumer
the same face as :class:`dpmq.websocket_client.WebSocketClient`, so that one reconnect loop serves
both transports:

- :meth:`EventStreamClient.receive` returns the ``data`` of the next event (a message's five-field
  JSON, a gap notice, an error), or None after its timeout; one daemon reader thread parses the
  stream, so a timeout never cuts an event in half and a program can end without closing.
- The end of the stream raises simple-websocket's ``ConnectionClosed`` with the close code a
  WebSocket consumer would get: the ``code`` of the broker's final ``event: close``, or for a
  refusal answered as HTTP, the code of the same refusal on a WebSocket (409 is 4409, 400 is 1008,
  401 is 4401, 403 is 4403, 503 is 1013); 1006 when the stream just stops.
- Any other answer (a 404: no DPMQ there, or a wrong URL) is simple-websocket's
  ``ConnectionError`` with the HTTP status, as a refused WebSocket handshake.

``last_event_id`` (the last MessageCode received) is sent as ``Last-Event-ID``: the broker resumes
right after that message, as it does for a browser's ``EventSource``.
"""

import http.client
import json
import queue
import socket
import threading
import urllib.parse

from simple_websocket import ConnectionError

from .websocket_client import ENDED, take

#: The WebSocket close code of each refusal the broker answers as HTTP; any other answer that is
#: not an event stream is a failed connection (a wrong URL, or no DPMQ there).
REFUSAL_CODES = {400: 1008, 401: 4401, 403: 4403, 409: 4409, 429: 1013, 503: 1013}


class EventStreamClient:
    """One event stream: :meth:`connect`, then :meth:`receive` (one thread) and :meth:`close`
    (any thread)."""

    def __init__(self, sock=None, response=None, refusal=None):
        self._sock = sock
        self._response = response
        self._inbox = queue.Queue()
        self.close_reason, self.close_message = refusal or (None, None)
        self.last_event_id = None
        self._reader = None
        if refusal is not None:
            self._inbox.put(ENDED)
        else:
            self._reader = threading.Thread(target=self._read, daemon=True,
                                             name="dpmq-event-stream-reader")
            self._reader.start()

    @classmethod
    def connect(cls, url, headers=None, handshake_timeout=None, last_event_id=None):
        """Open ``url`` (http:// or https://); ``handshake_timeout`` bounds the wait for the
        answer's headers, after which the stream is read without a timeout."""
        parts = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=handshake_timeout)
        request = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
        if last_event_id:
            request["Last-Event-ID"] = last_event_id
        try:
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                         headers=request)
            sock = conn.sock            # the response may take it over (then conn.sock is None)
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if response.status == 200 and response.getheader("Content-Type", "").startswith(
                "text/event-stream"):
            sock.settimeout(None)       # heartbeats may be minutes apart, or off
            return cls(sock, response)
        try:
            refusal = _refusal(response.status, response.read(65536))
        finally:
            conn.close()
        return cls(refusal=refusal)

    def receive(self, timeout=None):
        """The next event's data (str); None after ``timeout`` seconds. Raises
        ``ConnectionClosed`` (``reason`` the close code) once the stream has ended."""
        return take(self._inbox, timeout, self)

    def close(self):
        """End the stream and its reader thread."""
        if self._sock is None:
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes the reader thread, which closes it
        except OSError:
            pass

    def _read(self):
        code, reason = 1006, "the event stream ended without a close event"
        try:
            for kind, data, event_id in _events(self._response):
                if event_id is not None:
                    self.last_event_id = event_id
                if kind == "close":
                    code, reason = _close_event(data)
                    break
                self._inbox.put(data)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = f"the event stream broke: {exc}"
        finally:
            self._response.close()
            self._sock.close()
            self.close_reason, self.close_message = code, reason
            self._inbox.put(ENDED)


def _events(response):
    """(event type, data, id or None) of each event of the stream, as the SSE specification
    parses them; comments (heartbeats) and ``retry`` are skipped."""
    kind, data, event_id = "message", [], None
    while True:
        line = response.readline()
        if not line:
            return
        line = line.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield kind, "\n".join(data), event_id
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value or "message"
        elif field == "id" and "\0" not in value:
            event_id = value


def _close_event(data):
    try:
        body = json.loads(data)
        return int(body.get("code", 1000)), str(body.get("reason", ""))
    except (ValueError, TypeError, AttributeError):
        return 1000, data


def _refusal(status, body):
    """(close code, reason) of an HTTP answer that is not an event stream; raises
    ``ConnectionError`` when it is not a DPMQ refusal at all."""
    try:
        reply = json.loads(body)
        reason = reply["msg"] if reply.get("code") == -1 else None
    except (ValueError, TypeError, AttributeError, KeyError):
        reason = None
    if reason is None or status not in REFUSAL_CODES:
        raise ConnectionError(status)
    return REFUSAL_CODES[status], reason
