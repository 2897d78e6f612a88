"""``ui`` never leaves a server running, and ``ui --auth`` asks for a password.

In-process tests run :func:`eval.mlflow_server.run_server` and
:func:`~eval.mlflow_server.start_server` on a stand-in server (a Python
script that starts a child of its own and, when asked, answers ``/health``)
and send this process SIGINT, SIGTERM or SIGHUP at each moment of a start:
inside the launch, during the health wait, while serving. The CLI tests run
``train_distributed.py ui`` with the real MLflow server in a subprocess,
interrupt it at several moments and look through ``/proc`` for any process
that carries the test's marker in its environment (the server, uvicorn and
its workers all inherit it): none may survive.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

import pytest

from eval.mlflow_server import (StopRequested, build_server_command, files_open_to_others, find_free_port,
                                health_ok, prepare_basic_auth, run_server, start_server,
                                stop_signals_deferred)

REPO = Path(__file__).resolve().parents[1]
LINUX = Path("/proc/self/environ").exists()
needs_proc = pytest.mark.skipif(not LINUX, reason="looks for surviving processes in /proc")
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP}

#: The stand-in server: starts a grandchild (as uvicorn is one), writes both pids, and answers
#: GET /health with 200 on argv[2] when argv[3] is "serve".
STAND_IN = r"""
import http.server, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(f"{__import__('os').getpid()} {child.pid}")
if sys.argv[3] == "serve":
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Health).serve_forever()
time.sleep(300)
"""


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def wait_until(condition, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """``make(serve)``: have start_server launch the stand-in; returns the file its two pids go to."""
    def make(serve: bool) -> Path:
        pids = tmp_path / f"pids-{uuid.uuid4().hex[:6]}"

        def command(host, port, *args, **kwargs):
            return [sys.executable, "-c", STAND_IN, str(pids), str(port), "serve" if serve else "wait"]

        monkeypatch.setattr("eval.mlflow_server.build_server_command", command)
        return pids
    return make


def stand_in_pids(path: Path) -> list[int]:
    assert wait_until(lambda: path.exists() and len(path.read_text().split()) == 2, 20), "the stand-in never started"
    return [int(pid) for pid in path.read_text().split()]


def assert_all_gone(pids: list[int]) -> None:
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 10), \
        f"still running: {[pid for pid in pids if alive(pid)]}"


def signal_later(signum: int, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


# --------------------------------------------------------------------------------------------
# stop_signals_deferred: what a signal held back during a launch or a stop turns into

def test_a_signal_held_back_is_handed_to_a_python_handler_after_the_block():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: received.append(number))
    try:
        with stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert received == []  # held back inside
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum, previous_handler", [
    (signal.SIGINT, signal.default_int_handler),  # Ctrl-C's default: KeyboardInterrupt
    (signal.SIGTERM, signal.SIG_DFL),  # would end the process: raised instead, so that clean-up runs
    (signal.SIGHUP, signal.SIG_DFL),
])
def test_a_signal_held_back_is_raised_as_stop_requested(signum, previous_handler):
    previous = signal.signal(signum, previous_handler)
    try:
        with pytest.raises(StopRequested) as caught:
            with stop_signals_deferred():
                os.kill(os.getpid(), signum)
                time.sleep(0.05)
        assert caught.value.signum == signum and isinstance(caught.value, KeyboardInterrupt)
        assert signal.getsignal(signum) is previous_handler
    finally:
        signal.signal(signum, previous)


def test_a_signal_held_back_stays_ignored_when_it_was_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_block_s_own_error_wins_over_a_held_back_signal():
    with pytest.raises(RuntimeError, match="own"):
        with stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            raise RuntimeError("own")


# --------------------------------------------------------------------------------------------
# run_server / start_server on the stand-in: every moment of a start, and serving

@needs_proc
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_inside_the_launch_stops_the_server(stand_in, monkeypatch, tmp_path, name):
    """The signal arrives while the process is being launched (held back until it is known), then stops it."""
    import eval.mlflow_server as server_module

    pids_file = stand_in(serve=False)
    launched = []
    original = server_module.start_server

    def start_with_a_signal_at_launch(on_launch, **options):
        def launch(process):
            on_launch(process)
            launched.append(process)
            os.kill(os.getpid(), SIGNALS[name])
            time.sleep(0.05)  # delivered now, but held back
        return original(on_launch=launch, **options)

    monkeypatch.setattr(server_module, "start_server", start_with_a_signal_at_launch)
    stopped_by = run_server(lambda server: pytest.fail("reported ready"), port=find_free_port(), timeout=60,
                            log_path=tmp_path / "server.log")
    assert stopped_by == SIGNALS[name]
    assert launched and launched[0].returncode is not None
    assert_all_gone([launched[0].pid, *(int(pid) for pid in (pids_file.read_text().split()
                                                             if pids_file.exists() else []))])


@needs_proc
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_during_the_health_wait_stops_the_whole_group(stand_in, tmp_path, name):
    pids_file = stand_in(serve=False)
    timer = signal_later(SIGNALS[name], 1.0)
    started = time.monotonic()
    stopped_by = run_server(lambda server: pytest.fail("reported ready"), port=find_free_port(), timeout=60,
                            log_path=tmp_path / "server.log")
    timer.join()
    assert stopped_by == SIGNALS[name]
    assert time.monotonic() - started < 20
    assert_all_gone(stand_in_pids(pids_file))


@needs_proc
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_while_serving_stops_the_whole_group(stand_in, tmp_path, name):
    pids_file = stand_in(serve=True)
    ready = []

    def on_ready(server):
        ready.append(server)
        signal_later(SIGNALS[name], 0.3)

    stopped_by = run_server(on_ready, port=find_free_port(), timeout=60, log_path=tmp_path / "server.log",
                            poll_seconds=0.05)
    assert stopped_by == SIGNALS[name] and len(ready) == 1
    assert ready[0].returncode is not None
    assert_all_gone(stand_in_pids(pids_file))


@needs_proc
def test_start_server_interrupted_by_ctrl_c_leaves_nothing(stand_in, tmp_path):
    """start_server on its own (no run_server): Ctrl-C during the wait propagates, the group is gone."""
    pids_file = stand_in(serve=False)
    # Ctrl-C with its default handler, whatever the process had before: started in the background by a
    # script, pytest inherits SIGINT ignored, and start_server rightly drops a signal that was ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = signal_later(signal.SIGINT, 1.0)
        with pytest.raises(KeyboardInterrupt):
            start_server(port=find_free_port(), timeout=60, log_path=tmp_path / "server.log")
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert_all_gone(stand_in_pids(pids_file))


def test_run_server_returns_0_when_the_server_exits_by_itself(monkeypatch, tmp_path):
    health = find_free_port()
    code = ("import http.server, sys, threading, time\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self): self.send_response(200); self.end_headers()\n"
            "    def log_message(self, *a): pass\n"
            f"s = http.server.HTTPServer(('127.0.0.1', {health}), H)\n"
            "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
            "time.sleep(1.5); sys.exit(5)\n")
    monkeypatch.setattr("eval.mlflow_server.build_server_command", lambda *a, **k: [sys.executable, "-c", code])
    servers = []
    assert run_server(servers.append, port=health, timeout=60, log_path=tmp_path / "server.log",
                      poll_seconds=0.05) == 0
    assert servers[0].returncode == 5


@needs_proc
def test_the_server_goes_when_its_starter_is_killed_outright(tmp_path):
    """SIGKILL runs no handler: the kernel's parent-death signal (SIGTERM) still ends the server."""
    pids = tmp_path / "pids"
    starter = (f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\nimport eval.mlflow_server as m\n"
               f"m.build_server_command = lambda *a, **k: [sys.executable, '-c', {STAND_IN!r}, {str(pids)!r}, "
               f"str(a[1]), 'serve']\n"
               f"server = m.start_server(port=m.find_free_port(), timeout=60, log_path={str(tmp_path / 'log')!r})\n"
               "print('ready', flush=True)\ntime.sleep(300)\n")
    process = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        server_pids = stand_in_pids(pids)
        process.kill()
        process.wait()
        # The stand-in dies of the SIGTERM; its own child is the one a real mlflow server passes it on to.
        assert wait_until(lambda: not alive(server_pids[0]), 10)
    finally:
        for pid in (stand_in_pids(pids) if pids.exists() else []):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# --auth without a server: the folder, the password, the command

def test_build_server_command_with_auth_runs_the_basic_auth_app():
    command = build_server_command("127.0.0.1", 5123, "sqlite:///runs.db", "store", auth=True)
    assert command[-2:] == ["--app-name", "basic-auth"]
    with pytest.warns(UserWarning, match="plain HTTP.*unencrypted"):
        build_server_command("0.0.0.0", 5123, allow_remote=True, auth=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prepare_basic_auth_generates_a_private_password_once(tmp_path):
    pytest.importorskip("flask_wtf")
    folder = tmp_path / "auth"
    first = prepare_basic_auth(folder, environ={})
    password = (folder / "admin_password").read_text().strip()
    assert mode(folder) == 0o700 and mode(folder / "admin_password") == 0o600 and mode(folder / "secret_key") == 0o600
    assert len(password) >= 24 and first.password_file == folder.absolute() / "admin_password"
    assert first.environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == password
    assert first.environment["MLFLOW_AUTH_CONFIG_PATH"] == str(folder.absolute() / "basic_auth.ini")
    config = (folder / "basic_auth.ini").read_text()
    assert password not in config and "\nadmin_password" not in config and "admin_username = admin" in config
    assert f"database_uri = sqlite:///{folder.absolute() / 'basic_auth.db'}" in config
    assert password not in repr(first)
    second = prepare_basic_auth(folder, environ={})
    assert second.environment == first.environment  # same password and secret key


def test_prepare_basic_auth_takes_the_password_from_the_environment(tmp_path):
    pytest.importorskip("flask_wtf")
    given = "a-long-enough-password"
    auth = prepare_basic_auth(tmp_path / "auth", environ={"MLFLOW_AUTH_ADMIN_PASSWORD": given,
                                                          "MLFLOW_AUTH_ADMIN_USERNAME": "me"})
    assert auth.password_file is None and not (tmp_path / "auth" / "admin_password").exists()
    assert auth.environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == given and auth.admin_username == "me"


def test_prepare_basic_auth_once_the_account_exists_passes_no_password(tmp_path):
    pytest.importorskip("flask_wtf")
    folder = tmp_path / "auth"
    prepare_basic_auth(folder, environ={})  # first start: generated
    (folder / "basic_auth.db").write_bytes(b"")  # what the server's first start leaves
    auth = prepare_basic_auth(folder, environ={"MLFLOW_AUTH_ADMIN_PASSWORD": "ignored-by-mlflow-now"})
    assert auth.password_file == folder.absolute() / "admin_password"  # still the account's password
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in auth.environment
    (folder / "admin_password").unlink()
    auth = prepare_basic_auth(folder, environ={})
    assert auth.password_file is None and "MLFLOW_AUTH_ADMIN_PASSWORD" not in auth.environment
    assert not (folder / "admin_password").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda folder: folder.mkdir(mode=0o755), "can be opened by other users"),
    (lambda folder: (folder.mkdir(mode=0o700), (folder / "admin_password").write_text("x" * 30),
                     (folder / "admin_password").chmod(0o644)), "admin password.*can be read by other users"),
    (lambda folder: None, "at least 12"),
])
def test_prepare_basic_auth_refuses(tmp_path, setup, message):
    pytest.importorskip("flask_wtf")
    folder = tmp_path / "auth"
    setup(folder)
    if folder.exists():
        folder.chmod(mode(folder))  # mkdir's mode is masked by the umask; set it exactly
        if "opened" in message:
            folder.chmod(0o755)
    environ = {"MLFLOW_AUTH_ADMIN_PASSWORD": "short"} if message == "at least 12" else {}
    with pytest.raises(ValueError, match=message):
        prepare_basic_auth(folder, environ=environ)


def test_prepare_basic_auth_names_the_missing_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flask_wtf" else real(name, *a))
    with pytest.raises(ValueError, match=r"Flask-WTF.*\.\[auth\]"):
        prepare_basic_auth(tmp_path / "auth", environ={})
    assert not (tmp_path / "auth").exists()


def test_files_open_to_others(tmp_path):
    database, artifacts = tmp_path / "mlflow.db", tmp_path / "mlartifacts"
    database.write_bytes(b"")
    artifacts.mkdir()
    database.chmod(0o644)
    artifacts.chmod(0o755)
    found = files_open_to_others(f"sqlite:///{database}", str(artifacts))
    assert len(found) == 2 and "chmod 600" in found[0] and "chmod 700" in found[1]
    (tmp_path / "mlruns").mkdir(mode=0o700)
    (tmp_path / "mlruns").chmod(0o755)  # runs that training wrote straight to the database
    assert f"chmod 700 {tmp_path / 'mlruns'}" in files_open_to_others(f"sqlite:///{database}", str(artifacts))[1]
    database.chmod(0o600)
    artifacts.chmod(0o700)
    (tmp_path / "mlruns").chmod(0o700)
    assert files_open_to_others(f"sqlite:///{database}", str(artifacts)) == []
    assert files_open_to_others("postgresql://host/db", "s3://bucket/x") == []


# --------------------------------------------------------------------------------------------
# The ui command with the real MLflow server, in a subprocess

def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of each live process whose environment holds ``BRAINMRI_TEST_MARKER=marker``."""
    needle = f"BRAINMRI_TEST_MARKER={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0") or not alive(int(entry.name)):
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


class UiCommand:
    """``train_distributed.py ui`` in a subprocess with a marker in its environment."""

    def __init__(self, work: Path, *arguments: str, env: dict[str, str] | None = None):
        self.marker = uuid.uuid4().hex
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout, self.stderr = work / f"ui-{self.marker[:6]}.out", work / f"ui-{self.marker[:6]}.err"
        environment = {**os.environ, "BRAINMRI_TEST_MARKER": self.marker, **(env or {})}
        for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_TRACKING_URI"):
            if name not in (env or {}):
                environment.pop(name, None)
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "train_distributed.py"), "ui", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                 "--artifacts-destination", str(work / "mlartifacts"), *arguments],
                cwd=work, env=environment, stdout=out, stderr=err)

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def server_processes(self) -> dict[int, str]:
        return {pid: line for pid, line in marked_processes(self.marker).items() if pid != self.process.pid}

    def finish(self) -> int:
        """Wait for the command to end; then nothing of its server may be left."""
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        survivors = {}
        if not wait_until(lambda: not self.server_processes(), 10, 0.1):
            survivors = self.server_processes()
            for pid in survivors:
                os.kill(pid, signal.SIGKILL)
        assert not survivors, f"left running after ui exited {code}: {survivors}\n{self.output()}"
        return code


MOMENTS = {
    "announced": lambda ui: "starting MLflow server" in ui.stderr.read_text(),
    "launched": lambda ui: any("-m mlflow server" in line for line in ui.server_processes().values()),
    "health wait": lambda ui: any("uvicorn" in line for line in ui.server_processes().values()),
}


@needs_proc
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ui_interrupted_during_its_start_leaves_no_server(tmp_path, moment):
    ui = UiCommand(tmp_path)
    try:
        assert wait_until(lambda: MOMENTS[moment](ui) or ui.process.poll() is not None, 120, 0.01), ui.output()
        answering = health_ok(ui.url, timeout=0.5)
        ui.process.send_signal(signal.SIGINT)
    finally:
        code = ui.finish()
    assert not answering, f"the server already answered at moment {moment!r}: not a start-up interrupt"
    assert "MLflow UI:" not in ui.output()
    # Before the handlers are in place, Ctrl-C is click's "Aborted!" (1); after, the usual 128 + SIGINT.
    assert code in ((1, 130) if moment == "announced" else (130,)), ui.output()


def basic_auth_get(url: str, endpoint: str, user: str | None = None, password: str = "") -> int:
    request = urllib.request.Request(f"{url}{endpoint}")
    if user is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@needs_proc
def test_ui_with_auth_asks_for_the_generated_password_and_stops_on_sigterm(tmp_path):
    pytest.importorskip("flask_wtf")
    ui = UiCommand(tmp_path, "--auth", "--auth-dir", str(tmp_path / "auth"))
    try:
        assert wait_until(lambda: "MLflow UI:" in ui.stdout.read_text() or ui.process.poll() is not None, 180,
                          0.1), ui.output()
        password = (tmp_path / "auth" / "admin_password").read_text().strip()
        search = "/api/2.0/mlflow/experiments/search?max_results=5"
        statuses = {"health": basic_auth_get(ui.url, "/health"),
                    "anonymous": basic_auth_get(ui.url, search),
                    "wrong password": basic_auth_get(ui.url, search, "admin", "not-the-password"),
                    "admin": basic_auth_get(ui.url, search, "admin", password),
                    "anonymous page": basic_auth_get(ui.url, "/")}
        listed = ui.server_processes()
        ui.process.send_signal(signal.SIGTERM)
    finally:
        code = ui.finish()
    assert statuses == {"health": 200, "anonymous": 401, "wrong password": 401, "admin": 200, "anonymous page": 401}
    assert any("--app-name basic-auth" in line for line in listed.values()), listed
    assert code == 0, ui.output()
    assert password not in ui.output() and str(tmp_path / "auth" / "admin_password") in ui.output()
    assert "MLFLOW_TRACKING_USERNAME=admin" in ui.output() and "MLflow server stopped (SIGTERM)" in ui.output()
    assert mode(tmp_path / "auth") == 0o700 and mode(tmp_path / "auth" / "admin_password") == 0o600
    assert password not in (tmp_path / "auth" / "basic_auth.ini").read_text()
    for line in listed.values():  # nor on any command line, which every user can read
        assert password not in line
