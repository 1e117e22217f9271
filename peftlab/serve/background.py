"""Run a server in this process, on a background thread: for notebooks and tests.

    handle = start_background(create_app(model, tokenizer))     # a free port on 127.0.0.1
    requests.post(handle.url + "/v1/predict", json={...})
    handle.stop()

`peftlab serve` (serve/cli.py) is the same app under uvicorn in its own process; this helper
only saves the start-up of a second Python when the model is already loaded here.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class BackgroundServer:
    """A server started by start_background: its base URL, the uvicorn.Server and the thread."""

    url: str                 # http://host:port
    server: object           # the uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down (the app's lifespan stops its batching worker) and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def start_background(app, host: str = "127.0.0.1", port: int | None = None,
                     timeout: float = 30.0) -> BackgroundServer:
    """Serve `app` with uvicorn on a daemon thread; return once it accepts connections."""
    import uvicorn
    port = free_port(host) if port is None else port
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"peftlab-serve-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} within {timeout} s "
                               f"(is the port taken?).")
        time.sleep(0.02)
    return BackgroundServer(f"http://{host}:{port}", server, thread)
