"""Start and stop a local MLflow tracking server (UI + REST API) on the project's store.

The server keeps runs in a SQLite database (``sqlite:///mlflow.db`` by
default) and serves artifacts itself (``--serve-artifacts``) from a folder
(``./mlartifacts`` by default), so that training started anywhere with
``--tracking-uri http://HOST:PORT`` uploads its report and model through the
server and the UI can show them.

MLflow's server has no authentication: anyone who can reach the port can read
and delete every run. It is therefore bound to the loopback interface unless
the caller asks for another address explicitly (``allow_remote=True``).

Typical use::

    server = start_server(port=0)          # a free port, waits until /health answers
    print(server.url)                      # http://127.0.0.1:PORT
    ...
    stop_server(server)                    # or serve_until_stopped(server): until Ctrl-C/SIGTERM
"""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BACKEND_STORE_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACTS_DESTINATION = "./mlartifacts"
NO_AUTHENTICATION_WARNING = (
    "MLflow's server has no authentication: anyone who can reach {address} can read, change "
    "and delete every run and artifact. Prefer --host 127.0.0.1 with an SSH tunnel "
    "(ssh -L PORT:127.0.0.1:PORT NODE)."
)


class MlflowServer(subprocess.Popen):
    """A running ``mlflow server`` process with the address it answers on.

    Attributes:
        url: base address for the browser and for ``--tracking-uri``, e.g.
            ``http://127.0.0.1:5000`` (``0.0.0.0``/``::`` are reached through loopback).
        port: the TCP port it listens on.
        log_path: file that holds the server's stdout and stderr.
    """

    url: str = ""
    port: int = 0
    log_path: Path | None = None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``), else False.

    Host names other than ``localhost`` are not resolved and count as remote.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def server_url(host: str, port: int) -> str:
    """Address a local client uses to reach a server bound to ``host:port``.

    A wildcard bind (``0.0.0.0`` or ``::``) is reached through loopback;
    IPv6 literals get brackets. ``server_url("0.0.0.0", 5000)`` ->
    ``"http://127.0.0.1:5000"``.
    """
    host = host.strip().strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def check_host(host: str, allow_remote: bool = False) -> None:
    """Refuse an empty host, and a non-loopback one unless ``allow_remote``.

    Raises:
        ValueError: with the reason and what to do instead.
    """
    if not host.strip():
        raise ValueError("host is empty; use 127.0.0.1 for a server only this machine can reach")
    if not is_loopback_host(host) and not allow_remote:
        raise ValueError(
            f"refusing to serve MLflow on {host!r}, which is not a loopback address: MLflow's server has "
            f"no authentication, so anyone who can reach it could read and delete every run. Use "
            f"127.0.0.1 (with an SSH tunnel to reach it from another machine), or pass "
            f"allow_remote=True (--allow-remote) if the network is trusted.")


def build_server_command(host: str, port: int, backend_store_uri: str = DEFAULT_BACKEND_STORE_URI,
                         artifacts_destination: str = DEFAULT_ARTIFACTS_DESTINATION,
                         allow_remote: bool = False, workers: int = 1) -> list[str]:
    """Command line that runs ``mlflow server`` with this Python (the current virtualenv).

    Args:
        host: interface to bind; loopback unless ``allow_remote``.
        port: TCP port, 1..65535 (use :func:`find_free_port` for a free one).
        backend_store_uri: runs database, e.g. ``sqlite:///mlflow.db``
            (MLflow 3 refuses plain-folder stores for new servers).
        artifacts_destination: folder or URI where the server keeps
            artifacts; clients upload and download them through the server.
        allow_remote: allow a non-loopback ``host``; a warning says that the
            server has no authentication.
        workers: server worker processes (1 is plenty for one person's UI).

    Returns:
        ``[sys.executable, "-m", "mlflow", "server", "--host", ..., "--port", ...,
        "--backend-store-uri", ..., "--serve-artifacts", "--artifacts-destination", ...,
        "--workers", ...]``.

    Raises:
        ValueError: non-loopback ``host`` without ``allow_remote``, a port out
            of range, an empty store URI or destination, or ``workers`` < 1.
    """
    check_host(host, allow_remote)
    if not is_loopback_host(host):
        warnings.warn(NO_AUTHENTICATION_WARNING.format(address=f"{host}:{port}"), UserWarning, stacklevel=2)
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port} (find_free_port() picks a free one)")
    if not backend_store_uri.strip():
        raise ValueError("backend_store_uri is empty; use e.g. sqlite:///mlflow.db")
    if not str(artifacts_destination).strip():
        raise ValueError("artifacts_destination is empty; use e.g. ./mlartifacts")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return [sys.executable, "-m", "mlflow", "server",
            "--host", host, "--port", str(int(port)),
            "--backend-store-uri", backend_store_uri,
            "--serve-artifacts", "--artifacts-destination", str(artifacts_destination),
            "--workers", str(workers)]


def find_free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it).

    Another program may take it before the server binds; :func:`start_server`
    then fails with the server's error.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


def health_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET {url}/health`` answers 200, False on any connection error."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
    try:
        with opener.open(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def log_tail(path: Path | None, lines: int = 30) -> str:
    """Last ``lines`` lines of a text file ('' when there is none)."""
    if path is None or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def start_server(host: str = DEFAULT_HOST, port: int = 0, backend_store_uri: str = DEFAULT_BACKEND_STORE_URI,
                 artifacts_destination: str = DEFAULT_ARTIFACTS_DESTINATION, allow_remote: bool = False,
                 workers: int = 1, timeout: float = 120.0, log_path: str | Path | None = None,
                 env: dict[str, str] | None = None, job_execution: bool = False) -> MlflowServer:
    """Start ``mlflow server`` in the background and wait until ``/health`` answers.

    Args:
        host, backend_store_uri, artifacts_destination, allow_remote, workers:
            as in :func:`build_server_command`.
        port: TCP port; 0 picks a free one.
        timeout: seconds to wait for ``/health`` (a fresh SQLite store is
            migrated first, which takes a few seconds).
        log_path: file for the server's stdout/stderr; default a new
            ``mlflow-server-*.log`` in the temporary folder.
        env: environment for the server (default: this process's).
        job_execution: run MLflow's background job workers (used by its
            GenAI features: judges, trace roll-ups). Off by default: they are
            eight more processes that training runs never use.

    Returns:
        The running :class:`MlflowServer` (a ``subprocess.Popen``) with
        ``url``, ``port`` and ``log_path``. It leads its own process group, so
        :func:`stop_server` also ends the web server it starts.

    Raises:
        ValueError: as :func:`build_server_command`, or a negative timeout.
        RuntimeError: the server exited or did not answer within ``timeout``;
            the message holds the end of its log.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    check_host(host, allow_remote)
    port = int(port) or find_free_port(host)
    command = build_server_command(host, port, backend_store_uri, artifacts_destination, allow_remote, workers)
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
        os.close(handle)
        log_path = name
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ if env is None else env)
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if job_execution else "false"
    with open(log_path, "ab") as log:
        process = MlflowServer(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               env=environment, start_new_session=os.name == "posix")
    process.url = server_url(host, port)
    process.port = port
    process.log_path = log_path
    deadline = time.monotonic() + timeout
    while True:
        if health_ok(process.url):
            return process
        if process.poll() is not None:
            stop_server(process)
            raise RuntimeError(f"mlflow server exited with code {process.returncode} before answering on "
                               f"{process.url}; last lines of {log_path}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"mlflow server did not answer {process.url}/health within {timeout:g} s; "
                               f"last lines of {log_path}:\n{log_tail(log_path)}")
        time.sleep(0.25)


def stop_server(process: subprocess.Popen, timeout: float = 15.0) -> int | None:
    """Stop a server from :func:`start_server`: SIGTERM to its process group, SIGKILL after ``timeout``.

    Safe to call twice or on a server that already exited.

    Returns:
        The server's exit code (None if it could not be collected).
    """
    def signal_group(signum: int) -> None:
        try:
            if os.name == "posix":
                os.killpg(process.pid, signum)
            elif signum == signal.SIGTERM:
                process.terminate()
            else:
                process.kill()
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    # The web server runs as a child in the same group; it may outlive the parent.
    signal_group(signal.SIGKILL)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def serve_until_stopped(process: subprocess.Popen, poll_seconds: float = 0.5) -> bool:
    """Block until Ctrl-C, SIGTERM or SIGHUP, or until the server exits by itself; then stop it.

    The server runs in its own process group, so a signal to this process
    does not reach it; this function forwards the stop. Call it from the
    main thread (signal handlers are installed there and restored after).

    Returns:
        True when stopped on request (Ctrl-C or a signal), False when the
        server had exited by itself (its log says why).
    """
    requested: list[int] = []
    previous = {}
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            previous[signum] = signal.signal(signum, lambda number, frame: requested.append(number))
    try:
        while not requested and process.poll() is None:
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        requested.append(signal.SIGINT)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stop_server(process)
    return bool(requested)
