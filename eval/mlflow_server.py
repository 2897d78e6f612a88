"""Start and stop a local MLflow tracking server (UI + REST API) on the project's store.

The server keeps runs in a SQLite database (``sqlite:///mlflow.db`` by
default) and serves artifacts itself (``--serve-artifacts``) from a folder
(``./mlartifacts`` by default), so that training started anywhere with
``--tracking-uri http://HOST:PORT`` uploads its report and model through the
server and the UI can show them.

MLflow's plain server has no authentication: anyone who can reach the port
can read, change and delete every run, and that includes every local user of
a shared machine when it is bound to 127.0.0.1. It is therefore bound to the
loopback interface unless the caller asks for another address explicitly
(``allow_remote=True``), and ``auth=True`` runs MLflow's basic-auth app
instead (:func:`prepare_basic_auth`: an admin account whose password is
never written into a config file or shown on the console).

The server leads its own process group. :func:`start_server` and
:func:`stop_server` hold back SIGINT, SIGTERM and SIGHUP while they launch or
stop it, so an interrupt can never leave a server that nobody stops, and
:func:`run_server` (the ``ui`` command) stops the group on every way out.

Typical use::

    server = start_server(port=0)          # a free port, waits until /health answers
    print(server.url)                      # http://127.0.0.1:PORT
    ...
    stop_server(server)                    # or run_server(on_ready): until Ctrl-C/SIGTERM/SIGHUP
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import secrets
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
from typing import Callable, Iterator, Mapping

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BACKEND_STORE_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACTS_DESTINATION = "./mlartifacts"
NO_AUTHENTICATION_WARNING = (
    "MLflow's server has no authentication: anyone who can reach {address} can read, change "
    "and delete every run and artifact. Prefer --host 127.0.0.1 with an SSH tunnel "
    "(ssh -L PORT:127.0.0.1:PORT NODE)."
)
PLAIN_HTTP_AUTH_WARNING = (
    "basic auth on {address} over plain HTTP: passwords and runs cross the network unencrypted. "
    "Prefer --host 127.0.0.1 with an SSH tunnel (ssh -L PORT:127.0.0.1:PORT NODE)."
)
#: The signals that stop a server: Ctrl-C, ``kill``/``scancel``, a closed terminal.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
#: Account that MLflow's basic-auth app creates on its first start.
DEFAULT_ADMIN_USERNAME = "admin"
DEFAULT_AUTH_FOLDER = "./mlflow-auth"


class MlflowServer(subprocess.Popen):
    """A running ``mlflow server`` process with the address it answers on.

    Attributes:
        url: base address for the browser and for ``--tracking-uri``, e.g.
            ``http://127.0.0.1:5000`` (``0.0.0.0``/``::`` are reached through loopback).
        port: the TCP port it listens on.
        log_path: file that holds the server's stdout and stderr.
        auth: the basic-auth folder (:func:`prepare_basic_auth`), None without authentication.
    """

    url: str = ""
    port: int = 0
    log_path: Path | None = None
    auth: "BasicAuth | None" = None


class StopRequested(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) raised as an exception, so that ``finally`` blocks run.

    A subclass of KeyboardInterrupt: code that handles Ctrl-C handles it too.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Inside the block, SIGINT, SIGTERM and SIGHUP raise :class:`StopRequested`; the old handlers come back after.

    SIGTERM and SIGHUP otherwise end Python without running ``finally``
    blocks. A no-op outside the main thread (Python handles signals there only).
    """
    if not _in_main_thread():
        yield
        return

    def raise_stop(number: int, frame) -> None:
        raise StopRequested(number)

    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, raise_stop)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP inside the block (a launch or a stop that must not be cut short).

    A signal that arrives inside is recorded; on leaving, the old handlers
    come back and the first recorded signal is handed to its old handler (a
    Python handler is called, Ctrl-C's default raises :class:`StopRequested`),
    or raised as :class:`StopRequested` where the old action was to end the
    process, or dropped where it was ignored. When the block itself raised,
    that exception wins. A no-op outside the main thread.
    """
    if not _in_main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        signum = received[0]
        handler = previous.get(signum)
        if handler is signal.SIG_IGN:
            return
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signum, None)
            return
        raise StopRequested(signum)


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
                         allow_remote: bool = False, workers: int = 1, auth: bool = False) -> list[str]:
    """Command line that runs ``mlflow server`` with this Python (the current virtualenv).

    Args:
        host: interface to bind; loopback unless ``allow_remote``.
        port: TCP port, 1..65535 (use :func:`find_free_port` for a free one).
        backend_store_uri: runs database, e.g. ``sqlite:///mlflow.db``
            (MLflow 3 refuses plain-folder stores for new servers).
        artifacts_destination: folder or URI where the server keeps
            artifacts; clients upload and download them through the server.
        allow_remote: allow a non-loopback ``host``; a warning says that the
            server has no authentication (with ``auth``: that passwords cross
            the network unencrypted).
        workers: server worker processes (1 is plenty for one person's UI).
        auth: run MLflow's basic-auth app (``--app-name basic-auth``); its
            configuration comes from :func:`prepare_basic_auth` through the
            environment.

    Returns:
        ``[sys.executable, "-m", "mlflow", "server", "--host", ..., "--port", ...,
        "--backend-store-uri", ..., "--serve-artifacts", "--artifacts-destination", ...,
        "--workers", ...]``, then ``"--app-name", "basic-auth"`` with ``auth``.

    Raises:
        ValueError: non-loopback ``host`` without ``allow_remote``, a port out
            of range, an empty store URI or destination, or ``workers`` < 1.
    """
    check_host(host, allow_remote)
    if not is_loopback_host(host):
        template = PLAIN_HTTP_AUTH_WARNING if auth else NO_AUTHENTICATION_WARNING
        warnings.warn(template.format(address=f"{host}:{port}"), UserWarning, stacklevel=2)
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port} (find_free_port() picks a free one)")
    if not backend_store_uri.strip():
        raise ValueError("backend_store_uri is empty; use e.g. sqlite:///mlflow.db")
    if not str(artifacts_destination).strip():
        raise ValueError("artifacts_destination is empty; use e.g. ./mlartifacts")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    command = [sys.executable, "-m", "mlflow", "server",
               "--host", host, "--port", str(int(port)),
               "--backend-store-uri", backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", str(artifacts_destination),
               "--workers", str(workers)]
    return command + ["--app-name", "basic-auth"] if auth else command


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


@dataclasses.dataclass(frozen=True)
class BasicAuth:
    """What MLflow's basic-auth app needs, kept in one folder that only its owner can open.

    Attributes:
        folder: the folder (mode 0700).
        config_path: ``basic_auth.ini`` (MLflow's settings; never a password).
        database_path: ``basic_auth.db``: accounts (password hashes) and permissions.
        admin_username: the admin account, ``admin`` unless ``$MLFLOW_AUTH_ADMIN_USERNAME``.
        password_file: file holding the generated admin password (mode 0600);
            None when it comes from ``$MLFLOW_AUTH_ADMIN_PASSWORD``, or the
            account exists and there is no such file.
        environment: variables for the server (config path, secret key and,
            before the account exists, the admin password); left out of ``repr``.
    """

    folder: Path
    config_path: Path
    database_path: Path
    admin_username: str
    password_file: Path | None
    environment: dict[str, str] = dataclasses.field(repr=False)


AUTH_CONFIG_TEMPLATE = """\
# Written by `train_distributed.py ui --auth`; rewritten at each start. No password is kept here:
# the admin password of the first start comes from MLFLOW_AUTH_ADMIN_PASSWORD or from the file
# admin_password in this folder (mode 0600), and basic_auth.db stores only its hash.
[mlflow]
default_permission = READ
database_uri = sqlite:///{database}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def _private_file(path: Path, what: str) -> str | None:
    """The stripped text of ``path``, None when it does not exist; ValueError when others may read it."""
    if not path.exists():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{path} ({what}) can be read by other users (mode {mode:o}); "
                         f"chmod 600 {path}, or delete it to have a new one made")
    return path.read_text().strip()


def _write_private_file(path: Path, text: str, exclusive: bool = False) -> None:
    """Write ``text`` into ``path`` with mode 0600 (``exclusive``: fail if it exists)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def prepare_basic_auth(folder: str | Path = DEFAULT_AUTH_FOLDER, environ: Mapping[str, str] | None = None,
                       min_password_length: int = 12) -> BasicAuth:
    """Make (or reuse) the folder that MLflow's basic-auth app runs from; never puts a password in plain sight.

    On the first start MLflow creates the admin account with the password
    of ``$MLFLOW_AUTH_ADMIN_PASSWORD`` when set, else with one generated
    here (32 random URL-safe characters) and saved to ``folder/admin_password``
    with mode 0600; the console only names that file. Once ``basic_auth.db``
    exists the account is reused and no password is passed (MLflow would
    ignore it; change it through its ``users/update-password`` API). The Flask secret key for the sign-up
    form's CSRF check is ``$MLFLOW_FLASK_SERVER_SECRET_KEY`` or
    ``folder/secret_key`` (generated once, mode 0600).

    Args:
        folder: where ``basic_auth.ini``, ``basic_auth.db``, ``admin_password``
            and ``secret_key`` live; created with mode 0700.
        environ: environment to read (default: this process's).
        min_password_length: MLflow refuses shorter admin passwords (12).

    Returns:
        The :class:`BasicAuth` with the server's environment.

    Raises:
        ValueError: Flask-WTF is missing (``pip install -e ".[auth]"``), the
            folder or a secret file can be read by other users, or
            ``$MLFLOW_AUTH_ADMIN_PASSWORD`` is shorter than ``min_password_length``.
    """
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise ValueError("--auth runs MLflow's basic-auth app, which needs Flask-WTF: "
                         "pip install -e \".[auth]\" (or pip install \"mlflow[auth]\")")
    environ = os.environ if environ is None else environ
    folder = Path(folder).absolute()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = folder.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{folder} holds the MLflow accounts and can be opened by other users (mode {mode:o}); "
                         f"chmod 700 {folder}")
    admin = environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or DEFAULT_ADMIN_USERNAME
    database = folder / "basic_auth.db"
    config_path = folder / "basic_auth.ini"
    _write_private_file(config_path, AUTH_CONFIG_TEMPLATE.format(database=database.as_posix(), admin=admin))
    environment = {"MLFLOW_AUTH_CONFIG_PATH": str(config_path)}

    password_file: Path | None = folder / "admin_password"
    saved = _private_file(password_file, "the MLflow admin password")
    given = environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if database.exists():  # the account exists: MLflow ignores any password setting
        password_file = password_file if saved is not None else None
    elif given:
        if len(given) < min_password_length:
            raise ValueError(f"MLFLOW_AUTH_ADMIN_PASSWORD is {len(given)} characters long; MLflow needs at "
                             f"least {min_password_length}")
        environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = given
        password_file = None
    else:
        if saved is None:
            saved = secrets.token_urlsafe(24)
            _write_private_file(password_file, saved + "\n", exclusive=True)
        environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = saved

    secret_key = environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY", "")
    if not secret_key:
        key_file = folder / "secret_key"
        secret_key = _private_file(key_file, "the MLflow server's secret key") or ""
        if not secret_key:
            secret_key = secrets.token_hex(32)
            _write_private_file(key_file, secret_key + "\n")
    environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret_key
    return BasicAuth(folder=folder, config_path=config_path, database_path=database, admin_username=admin,
                     password_file=password_file, environment=environment)


def files_open_to_others(backend_store_uri: str, artifacts_destination: str) -> list[str]:
    """Warnings for a local store that other users can read without the server (its file modes decide).

    Checked: a ``sqlite:///PATH`` database and the ``mlruns`` folder beside it
    (artifacts of runs that training wrote straight to the database), and a
    local artifacts destination; other URIs give nothing. A missing path is
    not a warning.
    """
    paths = []
    if backend_store_uri.startswith("sqlite:///"):
        database = Path(backend_store_uri[len("sqlite:///"):])
        paths += [database, database.parent / "mlruns"]
    destination = str(artifacts_destination)
    if "://" not in destination or destination.startswith("file://"):
        paths.append(Path(destination.removeprefix("file://")))
    found = []
    for path in paths:
        if path.exists() and path.stat().st_mode & 0o044:
            mode = path.stat().st_mode & 0o777
            fix = "chmod 700" if path.is_dir() else "chmod 600"
            found.append(f"{path} can be read by other users of this machine (mode {mode:o}) without going "
                         f"through the server; {fix} {path} to keep its runs to yourself")
    return found


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function for ``preexec_fn`` that has the child sent SIGTERM when this process dies.

    This covers the one exit no handler sees (SIGKILL, the out-of-memory
    killer): ``mlflow server`` passes the SIGTERM on to its web server.
    None elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, terminate, set_parent_death_signal = os.getpid(), int(signal.SIGTERM), 1  # PR_SET_PDEATHSIG

    def set_signal() -> None:
        prctl(set_parent_death_signal, terminate)
        if os.getppid() != parent:  # the parent died before the call
            os.kill(os.getpid(), terminate)

    return set_signal


def start_server(host: str = DEFAULT_HOST, port: int = 0, backend_store_uri: str = DEFAULT_BACKEND_STORE_URI,
                 artifacts_destination: str = DEFAULT_ARTIFACTS_DESTINATION, allow_remote: bool = False,
                 workers: int = 1, timeout: float = 120.0, log_path: str | Path | None = None,
                 env: Mapping[str, str] | None = None, job_execution: bool = False,
                 auth: BasicAuth | None = None,
                 on_launch: Callable[["MlflowServer"], None] | None = None) -> MlflowServer:
    """Start ``mlflow server`` in the background and wait until ``/health`` answers.

    The server leads a new process group (session). SIGINT, SIGTERM and
    SIGHUP are held back from just before the launch until the process is
    known (:func:`stop_signals_deferred`), and anything that interrupts the
    wait, a signal included, stops the whole group before it propagates: no
    moment of a start leaves a server running that the caller does not have.

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
        auth: run MLflow's basic-auth app with this :func:`prepare_basic_auth`
            folder (``/health`` stays open, everything else asks for a password).
        on_launch: called with the process as soon as it exists, before the
            wait (with signals still held back), e.g. to register it for
            clean-up.

    Returns:
        The running :class:`MlflowServer` (a ``subprocess.Popen``) with
        ``url``, ``port``, ``log_path`` and ``auth``. :func:`stop_server`
        ends its whole process group, the web server it starts included.

    Raises:
        ValueError: as :func:`build_server_command`, or a negative timeout.
        RuntimeError: the server exited or did not answer within ``timeout``;
            the message holds the end of its log.
        StopRequested: a stop signal arrived during the start (the server is stopped).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    check_host(host, allow_remote)
    port = int(port) or find_free_port(host)
    command = build_server_command(host, port, backend_store_uri, artifacts_destination, allow_remote, workers,
                                   auth=auth is not None)
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
        os.close(handle)
        log_path = name
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ if env is None else env)
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if job_execution else "false"
    if auth is not None:
        environment.update(auth.environment)
    posix = os.name == "posix"
    process: MlflowServer | None = None
    try:
        with stop_signals_deferred():
            with open(log_path, "ab") as log:
                process = MlflowServer(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env=environment, start_new_session=posix,
                                       preexec_fn=die_with_parent() if posix else None)
            process.url = server_url(host, port)
            process.port = port
            process.log_path = log_path
            process.auth = auth
            if on_launch is not None:
                on_launch(process)
        deadline = time.monotonic() + timeout
        while True:
            if health_ok(process.url):
                return process
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {process.returncode} before answering on "
                                   f"{process.url}; last lines of {log_path}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer {process.url}/health within {timeout:g} s; "
                                   f"last lines of {log_path}:\n{log_tail(log_path)}")
            time.sleep(0.25)
    except BaseException:
        if process is not None:
            stop_server(process)
        raise


def stop_server(process: subprocess.Popen, timeout: float = 15.0) -> int | None:
    """Stop a server from :func:`start_server`: SIGTERM to its process group, SIGKILL after ``timeout``.

    Stop signals that arrive meanwhile are held back until the group is gone
    (:func:`stop_signals_deferred`). Safe to call twice or on a server that
    already exited.

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

    with stop_signals_deferred():
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


def run_server(on_ready: Callable[[MlflowServer], None], poll_seconds: float = 0.5, **options) -> int:
    """Start a server, call ``on_ready(server)``, serve until a stop signal or until it exits; stop it on every path.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP raise :class:`StopRequested` for the
    whole call (:func:`stop_signals_raise`), during the start, the health
    wait, ``on_ready`` and serving alike; the server is registered the moment
    it exists and its process group is stopped in ``finally``. Call it from
    the main thread.

    Args:
        on_ready: called once ``/health`` answers (print the address there).
        poll_seconds: how often to check whether the server is still running.
        options: keyword arguments of :func:`start_server`.

    Returns:
        The number of the signal that stopped it, or 0 when the server exited
        by itself (its exit code is ``returncode``, its log ``log_path``).

    Raises:
        ValueError, RuntimeError: as :func:`start_server` (nothing is left running).
    """
    launched: list[MlflowServer] = []
    try:
        with stop_signals_raise():
            try:
                server = start_server(on_launch=launched.append, **options)
                on_ready(server)
                while server.poll() is None:
                    time.sleep(poll_seconds)
                return 0
            except StopRequested as stop:
                return stop.signum
            finally:
                for process in launched:
                    stop_server(process)
    except StopRequested as stop:  # a second signal while the server was being stopped
        return stop.signum


def ready_lines(server: MlflowServer) -> list[tuple[str, bool]]:
    """What to tell the user once ``server`` answers: its address, how to sign in, how to log training to it.

    Each line comes with whether it is a note for stderr (True) rather than output for stdout (False).
    """
    lines = [(f"MLflow UI: {server.url}", False)]
    if server.auth is None:
        lines += [(f"log training to it with: --tracking-uri {server.url}", False),
                  ("no authentication: every user of this machine can read, change and delete these runs "
                   "(--auth asks for a password)", True)]
    else:
        user = server.auth.admin_username
        if server.auth.password_file is not None:
            password, where = f'"$(cat {server.auth.password_file})"', f"in {server.auth.password_file}"
        elif "MLFLOW_AUTH_ADMIN_PASSWORD" in server.auth.environment:
            password, where = '"$MLFLOW_AUTH_ADMIN_PASSWORD"', "$MLFLOW_AUTH_ADMIN_PASSWORD"
        else:
            password, where = "...", f"the one {server.auth.database_path} was made with"
        lines += [(f"sign in as {user!r}, password {where}", False),
                  (f"log training to it with: MLFLOW_TRACKING_USERNAME={user} MLFLOW_TRACKING_PASSWORD="
                   f"{password} python train_distributed.py train ... --tracking-uri {server.url}", False)]
    return lines + [(f"server log: {server.log_path}; Ctrl-C stops the server", True)]
