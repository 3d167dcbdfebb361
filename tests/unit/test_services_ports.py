"""The embedded services' port checks (`make demo` twice in a row must work)."""

from __future__ import annotations

import socket

from governance_dev.services import port_is_free


def _leave_time_wait_on_a_listening_port() -> int:
    """Serve one connection and close it from the server side, as a stopped server does: the
    server's end of it stays in TIME_WAIT on the listening port for a minute."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the active close: TIME_WAIT is on the server's side
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_a_port_whose_last_server_stopped_a_moment_ago_counts_as_free() -> None:
    assert port_is_free(_leave_time_wait_on_a_listening_port())


def test_a_port_something_listens_on_counts_as_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert not port_is_free(int(listener.getsockname()[1]))
