"""The bench's own HTTP client reads every framing a server may answer with, on a real socket."""

import socket
import threading

import pytest

from dpmq.bench.kit import KeepAlive

REPLIES = {
    b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Other: a:b\r\n\r\n{\"code\":0}\n",
    b"/chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"4\r\n{\"co\r\n6;ext=1\r\nde\":0}\r\n0\r\n\r\n"),
    b"/refused": b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno",
}


@pytest.fixture
def server():
    """Answers each request by its path, a byte at a time so that every read is partial; the
    path /close answers without a length and closes, as an HTTP/1.0-style server would."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn):
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(buffer) < length:
                buffer += conn.recv(4096)
            body, buffer = buffer[:length], buffer[length:]
            path = head.split(b" ")[1]
            reply = REPLIES.get(path, b"HTTP/1.1 200 OK\r\n\r\nclosing:" + body)
            for i in range(len(reply)):
                conn.sendall(reply[i:i + 1])
            if path not in REPLIES:
                conn.close()
                return

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], connections
    listener.close()
    for conn in connections:
        conn.close()


def test_replies_by_length_chunks_and_close_on_one_client(server):
    port, connections = server
    client = KeepAlive("127.0.0.1", port)
    assert client.post("/length", "a=1", "text/plain") == (200, b'{"code":0}\n')
    assert client.post("/chunked", b"b=2", "text/plain") == (200, b'{"code":0}')
    assert client.post("/refused", "c=3", "text/plain") == (413, b"no")
    assert len(connections) == 1                        # kept alive through all three
    assert client.post("/close", "d=4", "text/plain") == (200, b"closing:d=4")
    assert client.post("/length", "e=5", "text/plain", token="t") == (200, b'{"code":0}\n')
    assert len(connections) == 2                        # a new one after the server closed


def test_a_server_that_closes_mid_reply_is_an_error_not_a_short_body():
    listener = socket.create_server(("127.0.0.1", 0))

    def cut():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
        conn.close()

    threading.Thread(target=cut, daemon=True).start()
    client = KeepAlive("127.0.0.1", listener.getsockname()[1])
    with pytest.raises(ConnectionError, match="closed the connection before its reply ended"):
        client.post("/x", "a", "text/plain")
    listener.close()
