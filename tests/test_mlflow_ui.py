"""The MLflow server and what a person sees in its UI.

Fast tests cover ``eval.mlflow_server`` (command line, loopback-only rule,
start/stop errors; signals and ``--auth`` are in test_mlflow_server.py). The
``browser`` tests start a real server on a free loopback port, run an
ablation of two seeds through the real CLI over HTTP (one parent run, two
child runs that train and log their model), check the runs and the logged
models through the REST API and the MLflow client, then open in headless
Chromium what a person looks at: the runs table with the ablation's parent
and its children, a child's page, its logged model with the per-site AUCs,
and the compare page of the two seeds. They check the values shown and save
screenshots to ``benchmarks/results/mlflow_ui/``. They need Debian's
``chromium`` and ``chromium-driver`` and the ``selenium`` package
(``.ci/install_browser.sh``) and are skipped without them.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from eval.mlflow_server import (build_server_command, find_free_port, is_loopback_host, server_url, start_server,
                                stop_server)

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "benchmarks" / "results" / "mlflow_ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
EXPERIMENT = "ui-test"
TRAIN_FLAGS = ["--image-size", "32", "--batch-size", "16", "--weights", "none", "--set", "bootstrap_resamples=200",
               "--set", "min_class_images=10"]  # 24 images per class
AUC_METRICS = ("val_synth_b_auc", "test_synth_c_auc", "test_synth_c_auc_ci_low", "test_synth_c_unique_auc")


# --------------------------------------------------------------------------------------------
# eval.mlflow_server without a server

@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("192.168.0.7", False), ("node042.cluster", False),
])
def test_is_loopback_host(host, expected):
    assert is_loopback_host(host) is expected


@pytest.mark.parametrize("host, port, url", [
    ("127.0.0.1", 5000, "http://127.0.0.1:5000"),
    ("0.0.0.0", 8080, "http://127.0.0.1:8080"),
    ("::1", 5001, "http://[::1]:5001"),
    ("::", 5002, "http://[::1]:5002"),
    ("node042", 5003, "http://node042:5003"),
])
def test_server_url(host, port, url):
    assert server_url(host, port) == url


def test_build_server_command_on_loopback():
    command = build_server_command("127.0.0.1", 5123, "sqlite:///runs.db", "store/artifacts")
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[4:] == ["--host", "127.0.0.1", "--port", "5123", "--backend-store-uri", "sqlite:///runs.db",
                           "--serve-artifacts", "--artifacts-destination", "store/artifacts", "--workers", "1"]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "node042.cluster", "::"])
def test_build_server_command_refuses_remote_host(host):
    with pytest.raises(ValueError, match="not a loopback address.*no authentication.*allow_remote"):
        build_server_command(host, 5000)


def test_build_server_command_remote_host_when_asked_warns():
    with pytest.warns(UserWarning, match="no authentication.*0.0.0.0:5000"):
        command = build_server_command("0.0.0.0", 5000, allow_remote=True)
    assert command[command.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("kwargs, message", [
    ({"host": "", "port": 5000}, "host is empty"),
    ({"host": "127.0.0.1", "port": 0}, "port must be in 1..65535"),
    ({"host": "127.0.0.1", "port": 70000}, "port must be in 1..65535"),
    ({"host": "127.0.0.1", "port": 5000, "backend_store_uri": " "}, "backend_store_uri is empty"),
    ({"host": "127.0.0.1", "port": 5000, "artifacts_destination": ""}, "artifacts_destination is empty"),
    ({"host": "127.0.0.1", "port": 5000, "workers": 0}, "workers must be at least 1"),
])
def test_build_server_command_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_server_command(**kwargs)


def test_find_free_port_can_be_bound():
    port = find_free_port("127.0.0.1")
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", port))


def test_start_server_refuses_remote_host_before_starting_anything(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(ValueError, match="not a loopback address"):
        start_server(host="0.0.0.0", port=0)


def fake_server(monkeypatch, code: str) -> None:
    """Make start_server run ``python -c code`` instead of mlflow (no /health ever answers)."""
    monkeypatch.setattr("eval.mlflow_server.build_server_command",
                        lambda *args, **kwargs: [sys.executable, "-c", code])


def test_start_server_reports_early_exit_with_log_tail(monkeypatch, tmp_path):
    fake_server(monkeypatch, "import sys; print('starting'); sys.stderr.write('Address already in use\\n'); "
                             "sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*Address already in use"):
        start_server(port=find_free_port(), timeout=30, log_path=tmp_path / "server.log")


def test_start_server_times_out_and_stops_the_whole_process_group(monkeypatch, tmp_path):
    child_pid_file = tmp_path / "child.pid"
    fake_server(monkeypatch, "import subprocess, sys, time; "
                             "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
                             f"open({str(child_pid_file)!r}, 'w').write(str(child.pid)); "
                             "print('still starting', flush=True); time.sleep(120)")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)did not answer .*/health within 3 s.*still starting"):
        start_server(port=find_free_port(), timeout=3, log_path=tmp_path / "server.log")
    assert time.monotonic() - started < 30
    child_pid = int(child_pid_file.read_text())
    for _ in range(100):  # the child is killed; wait until the kernel has reaped it
        if not process_alive(child_pid):
            break
        time.sleep(0.05)
    assert not process_alive(child_pid)


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return False
    try:
        return "zombie" not in status.read_text()
    except OSError:
        return False


def test_stop_server_twice_is_harmless(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    assert stop_server(process) is not None
    assert stop_server(process) == process.returncode


def test_ui_command_refuses_remote_host_without_allow_remote():
    from click.testing import CliRunner

    from train_distributed import cli

    result = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0", "--port", "5000"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output and "--allow-remote" in result.output


# --------------------------------------------------------------------------------------------
# The real server, two trainings over HTTP, and the UI in headless Chromium

def browser_missing() -> str:
    """Why the browser tests cannot run here ('' when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (.ci/install_browser.sh)"
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not os.access(path, os.X_OK):
            return f"{name} not found (.ci/install_browser.sh)"
    return ""


def needs_browser(test):
    """Marks ``browser`` and ``slow``; skipped when Chromium, chromedriver or selenium are missing."""
    reason = browser_missing()
    for mark in (pytest.mark.browser, pytest.mark.slow, pytest.mark.skipif(bool(reason), reason=reason)):
        test = mark(test)
    return test


def js_number(value: float) -> str:
    """``String(value)`` in JavaScript for a value in [1e-6, 1e21): ``48``, ``0.5381944444444444``.

    The run page of the UI shows metric values this way.
    """
    if value == int(value):
        return str(int(value))
    text = repr(value)
    if "e" in text:
        raise ValueError(f"{value!r} is outside the range js_number writes like JavaScript")
    return text


def mlflow_compare_format(value: float) -> str:
    """The compare page's ``Utils.formatMetric``: 3 decimals below 10, 2 below 100, else 1."""
    def js_round(number: float) -> float:
        return float(math.floor(number + 0.5))

    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    for limit, scale in ((10, 1000), (100, 100)):
        if abs(value) < limit:
            return js_number(js_round(scale * value) / scale)
    return js_number(js_round(10 * value) / 10)


@pytest.mark.parametrize("value, text", [
    (0.5381944444444444, "0.538"), (0.3798177083333334, "0.38"), (0.7065, "0.707"), (1.0, "1"), (0.0, "0"),
    (41.7115, "41.71"), (1.2318, "1.232"), (0.0002, "2.000e-4"), (123.46, "123.5"),
])
def test_mlflow_compare_format(value, text):
    assert mlflow_compare_format(value) == text


LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never through a proxy


def rest_get(url: str, endpoint: str, **query) -> dict:
    with LOCAL.open(f"{url}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.loads(response.read())


def rest_post(url: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with LOCAL.open(request, timeout=30) as response:
        return json.loads(response.read())


ABLATION = "abl"
SEED_RUNS = {"run1": "01-base-seed0", "run2": "02-base-seed1"}  # the ablation's children, seeds 0 and 1


def run_ablation_over_http(work: Path, url: str) -> subprocess.CompletedProcess:
    """``train_distributed.py ablate --seeds 0,1`` on work/SITES, logging to ``url``; folder work/abl."""
    command = [sys.executable, str(REPO / "train_distributed.py"), "ablate", "--output", ABLATION, "--seeds", "0,1",
               "--title", "Seeds 0 and 1 of the 32 px recipe", "--",
               "--train-site", "synth_a=SITES/synth_a", "--val-site", "synth_b=SITES/synth_b",
               "--test-site", "synth_c=SITES/synth_c", *TRAIN_FLAGS, "--epochs", "2", "--set", "gradcam_examples=1",
               "--tracking-uri", url, "--experiment", EXPERIMENT]
    environment = {**os.environ, "BRAINMRI_CACHE": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2",
                   "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    with open(work / "ablate.log", "wb") as log:
        return subprocess.run(command, cwd=work, env=environment, stdout=log, stderr=subprocess.STDOUT, timeout=900)


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory):
    """A server on a free loopback port and a finished ablation logged to it over HTTP.

    The ablation runs ``train`` for seeds 0 and 1 (2 epochs, the model and a
    Grad-CAM example): a parent run ``abl`` and two children. The experiment
    is made first through the REST API. Sites are given relative to the
    working folder, as a person would type them.
    """
    from datasets.synthetic import write_demo_sites

    work = tmp_path_factory.mktemp("mlflow_ui")
    write_demo_sites(work / "SITES", images_per_class=24, size=64, seed=0)
    server = start_server(port=0, backend_store_uri=f"sqlite:///{work / 'mlflow.db'}",
                          artifacts_destination=str(work / "mlartifacts"), log_path=work / "server.log")
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the MLflow client of the tests goes straight to it
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        experiment = rest_post(server.url, "/api/2.0/mlflow/experiments/create", {"name": EXPERIMENT})
        result = run_ablation_over_http(work, server.url)
        log_text = (work / "ablate.log").read_text(errors="replace")
        assert result.returncode == 0, f"ablate failed ({result.returncode}):\n{log_text[-3000:]}"
        summaries = {name: json.loads((work / ABLATION / folder / "summary.json").read_text())
                     for name, folder in SEED_RUNS.items()}
        parent_id = json.loads((work / ABLATION / "ablation.json").read_text())["parent_run_id"]
        yield {"url": server.url, "experiment_id": experiment["experiment_id"], "summaries": summaries,
               "parent_id": parent_id, "work": work}
    finally:
        patch.undo()
        stop_server(server)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1600,1300",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def save_screenshot(driver, served_runs: dict, name: str) -> Path:
    """Screenshot into the test's folder and a copy into benchmarks/results/mlflow_ui/."""
    path = served_runs["work"] / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)
    return path


def close_assistant_panel(driver) -> None:
    """Close MLflow's assistant side panel if it is open (it hides part of the page)."""
    from selenium.webdriver.common.by import By

    close = "button[data-component-id='mlflow.assistant.chat_panel.close']"
    for button in driver.find_elements(By.CSS_SELECTOR, close):
        if button.is_displayed():
            button.click()


def run_of(served_runs: dict, name: str) -> dict:
    run_id = served_runs["summaries"][name]["mlflow_run_id"]
    return rest_get(served_runs["url"], "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]


def logged_model_of(served_runs: dict, name: str):
    """The LoggedModel of a child run, through the MLflow client (``search_logged_models``)."""
    from mlflow.tracking import MlflowClient

    run_id = served_runs["summaries"][name]["mlflow_run_id"]
    models = MlflowClient(served_runs["url"]).search_logged_models(
        [served_runs["experiment_id"]], filter_string=f"source_run_id = '{run_id}'")
    assert len(models) == 1, f"run {run_id} has {len(models)} logged models"
    return models[0]


@needs_browser
def test_runs_logged_over_http_have_params_metrics_inputs_and_artifacts(served_runs):
    url = served_runs["url"]
    run = run_of(served_runs, "run1")
    summary = served_runs["summaries"]["run1"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["experiment_id"] == served_runs["experiment_id"]
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # artifacts went through the server

    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["image_size"] == "32" and params["leakage"] == "purge-train" and params["epochs"] == "2"
    assert params["tracking_uri"] == url and params["train_site"] == "synth_a=SITES/synth_a"
    assert params["seed"] == "0" and params["parent_run_id"] == served_runs["parent_id"]
    assert {"augment.rotation_degrees", "augment.zoom", "augment.histogram_match_probability"} <= set(params)

    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["val_synth_b_auc"] == pytest.approx(summary["sites"]["synth_b"]["auc"], abs=1e-12)
    assert metrics["test_synth_c_auc"] == pytest.approx(summary["sites"]["synth_c"]["auc"], abs=1e-12)
    assert metrics["test_synth_c_auc_ci_low"] == pytest.approx(summary["sites"]["synth_c"]["auc_ci"][0], abs=1e-12)
    assert metrics["test_synth_c_unique_auc"] == pytest.approx(summary["sites"]["synth_c"]["unique"]["auc"],
                                                               abs=1e-12)
    assert 0.0 <= metrics["test_synth_c_auc_ci_low"] <= metrics["test_synth_c_auc"] <= 1.0

    inputs = {item["dataset"]["name"]: [t["value"] for t in item["tags"] if t["key"] == "mlflow.data.context"]
              for item in run["inputs"]["dataset_inputs"]}
    assert inputs == {"synth_a": ["train"], "synth_b": ["val"], "synth_c": ["test"]}

    def listed(path: str) -> set[str]:
        answer = rest_get(url, "/api/2.0/mlflow/artifacts/list", run_id=run["info"]["run_id"], path=path)
        return {item["path"] for item in answer.get("files", [])}

    assert "report" in listed("")
    assert "report/report.html" in listed("report")
    with LOCAL.open(f"{url}/get-artifact?path=report/report.html&run_uuid={run['info']['run_id']}",
                    timeout=30) as response:
        report = response.read().decode()
    assert "synth_c" in report and run["info"]["run_id"] in report

    second = run_of(served_runs, "run2")
    second_params = {p["key"]: p["value"] for p in second["data"]["params"]}
    assert second_params["epochs"] == "2" and second_params["seed"] == "1"
    assert "test_synth_c_auc" in {m["key"] for m in second["data"]["metrics"]}


@needs_browser
def test_the_ablation_is_one_parent_run_with_a_child_per_seed(served_runs):
    url, parent_id = served_runs["url"], served_runs["parent_id"]
    parent = rest_get(url, "/api/2.0/mlflow/runs/get", run_id=parent_id)["run"]
    tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert parent["info"]["run_name"] == ABLATION and parent["info"]["status"] == "FINISHED"
    assert tags["brainmri.ablation"] == ABLATION and "mlflow.parentRunId" not in tags
    assert tags["mlflow.note.content"] == "Seeds 0 and 1 of the 32 px recipe"
    for seed, name in enumerate(SEED_RUNS):
        child = {t["key"]: t["value"] for t in run_of(served_runs, name)["data"]["tags"]}
        assert (child["mlflow.parentRunId"], child["brainmri.ablation"], child["brainmri.variant"],
                child["brainmri.seed"]) == (parent_id, ABLATION, "base", str(seed))
    children = rest_post(url, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [served_runs["experiment_id"]], "filter": f"tags.`mlflow.parentRunId` = '{parent_id}'"})
    assert len(children["runs"]) == 2
    aucs = [served_runs["summaries"][name]["sites"]["synth_c"]["auc"] for name in SEED_RUNS]
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert metrics["base/test_synth_c_auc_mean"] == pytest.approx(sum(aucs) / 2, abs=1e-12)
    assert metrics["base/test_synth_c_auc_sd"] == pytest.approx(abs(aucs[0] - aucs[1]) / math.sqrt(2), abs=1e-12)
    assert metrics["base/seeds"] == 2
    listed = rest_get(url, "/api/2.0/mlflow/artifacts/list", run_id=parent_id)
    assert {"RESULTS.md", "results.json"} <= {item["path"] for item in listed["files"]}


@needs_browser
def test_each_child_logged_its_model_with_per_site_aucs(served_runs):
    for name in SEED_RUNS:
        model = logged_model_of(served_runs, name)
        summary = served_runs["summaries"][name]
        assert model.name == "model" and str(model.status) == "READY"
        assert model.model_id == summary["mlflow_model_id"]
        by_key = {metric.key: metric for metric in model.metrics}
        for key, site, value in (("val_synth_b_auc", "synth_b", summary["sites"]["synth_b"]["auc"]),
                                 ("test_synth_c_auc", "synth_c", summary["sites"]["synth_c"]["auc"]),
                                 ("test_synth_c_unique_auc", "synth_c", summary["sites"]["synth_c"]["unique"]["auc"])):
            metric = by_key[key]
            assert metric.value == pytest.approx(value, abs=1e-12)
            assert (metric.dataset_name, metric.model_id, metric.run_id) == (site, model.model_id,
                                                                             summary["mlflow_run_id"])


@needs_browser
def test_runs_page_shows_the_ablation_with_its_children(served_runs, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    parent_id = served_runs["parent_id"]
    child_ids = [served_runs["summaries"][name]["mlflow_run_id"] for name in SEED_RUNS]
    browser.set_window_size(1600, 700)
    browser.get(f"{served_runs['url']}/#/experiments/{served_runs['experiment_id']}/runs"
                "?workflowType=machine_learning")
    wait = WebDriverWait(browser, 90)
    parent_link = f"//a[@href='#/experiments/{served_runs['experiment_id']}/runs/{parent_id}']"
    wait.until(expected.presence_of_element_located((By.XPATH, parent_link)))
    close_assistant_panel(browser)
    # Children are folded under their parent until its + is pressed.
    assert not browser.find_elements(By.XPATH, f"//div[@role='row'][@row-id='{child_ids[0]}']")
    row = browser.find_element(By.XPATH, f"//div[@role='row'][@row-id='{parent_id}'][.{parent_link}]")
    row.find_element(By.CSS_SELECTOR, "button[data-component-id$='runnamecellrenderer.tsx_46']").click()
    for child_id in child_ids:
        wait.until(expected.presence_of_element_located(
            (By.XPATH, f"//div[@role='row'][@row-id='{child_id}']//a[contains(@href, '/runs/{child_id}')]")))
    time.sleep(0.5)

    def name_cell(run_id: str):
        return browser.find_element(By.XPATH, f"//div[@role='row'][@row-id='{run_id}']"
                                              f"//a[contains(@href, '/runs/{run_id}')]")

    names = {run_id: name_cell(run_id) for run_id in (parent_id, *child_ids)}
    assert names[parent_id].text == ABLATION
    assert sorted(names[child_id].text for child_id in child_ids) == ["base seed=0", "base seed=1"]
    tops = {run_id: cell.rect["y"] for run_id, cell in names.items()}
    assert all(tops[child_id] > tops[parent_id] for child_id in child_ids), "children are not below the parent"
    for child_id in child_ids:  # nested: indented under the parent, with the logged model in "Models"
        assert names[child_id].rect["x"] > names[parent_id].rect["x"] + 10
        cells = " ".join(cell.text for cell in browser.find_elements(
            By.XPATH, f"//div[@role='row'][@row-id='{child_id}']/div[@role='gridcell']"))
        assert "model" in cells.split(), cells
    assert "3 matching runs" in browser.find_element(By.TAG_NAME, "body").text
    save_screenshot(browser, served_runs, "runs.png")


@needs_browser
def test_run_page_shows_per_site_auc(served_runs, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    run = run_of(served_runs, "run1")
    run_id, run_name = run["info"]["run_id"], run["info"]["run_name"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    browser.set_window_size(1600, 1300)
    browser.get(f"{served_runs['url']}/#/experiments/{served_runs['experiment_id']}/runs/{run_id}"
                "?workflowType=machine_learning")
    wait = WebDriverWait(browser, 90)
    wait.until(expected.presence_of_element_located((By.XPATH, "//a[normalize-space(.)='test_synth_c_auc']")))
    close_assistant_panel(browser)
    assert run_name in browser.find_element(By.TAG_NAME, "body").text
    # The details panel names the parent run and links the logged model.
    model_id = served_runs["summaries"]["run1"]["mlflow_model_id"]
    wait.until(expected.presence_of_element_located((By.XPATH, f"//a[contains(@href, '{model_id}')]")))
    assert browser.find_elements(By.XPATH, f"//a[contains(@href, '/runs/{served_runs['parent_id']}')]")

    browser.find_element(By.CSS_SELECTOR, "input[placeholder='Search metrics']").send_keys("auc")
    wait.until(expected.invisibility_of_element_located((By.XPATH, "//a[normalize-space(.)='images_synth_a']")))
    for name in AUC_METRICS:  # each site's AUC, linked to the logged model it was measured on
        row = browser.find_element(By.XPATH, f"//div[@role='row'][.//a[normalize-space(.)='{name}']]")
        cells = [cell.text.strip() for cell in row.find_elements(By.XPATH, "./div[@role='cell']")]
        assert cells == [name, js_number(metrics[name]), "model"], f"{name}: page shows {cells}"
    datasets_text = browser.find_element(By.XPATH, "//*[normalize-space(.)='Datasets']/..").text
    assert "synth_a" in datasets_text

    # The picture: the metrics table scrolled to the validation site's AUC, the page to the table.
    first = browser.find_element(By.XPATH, "//div[@role='row'][.//a[normalize-space(.)='val_synth_b_auc']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});"  # then clear of the sticky header
                           "let box = arguments[0].parentElement;"
                           "while (box && box.scrollHeight <= box.clientHeight) box = box.parentElement;"
                           "if (box) box.scrollTop -= 2 * arguments[0].getBoundingClientRect().height;", first)
    heading = browser.find_element(By.XPATH, "//*[starts-with(normalize-space(.), 'Metrics (')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", heading)
    time.sleep(0.5)  # let the scroll settle before the picture
    save_screenshot(browser, served_runs, "run_page.png")


@needs_browser
def test_logged_model_page_shows_per_site_auc(served_runs, browser):
    """From the experiment's "Models" list to the model of seed 0: each site's AUC with its dataset."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    model = logged_model_of(served_runs, "run1")
    run_name = run_of(served_runs, "run1")["info"]["run_name"]
    values = {metric.key: metric for metric in model.metrics}
    browser.set_window_size(1600, 900)
    browser.get(f"{served_runs['url']}/#/experiments/{served_runs['experiment_id']}/models"
                "?workflowType=machine_learning")
    wait = WebDriverWait(browser, 90)
    row = f"//div[@role='row'][@row-id='{model.model_id}']"
    wait.until(expected.presence_of_element_located((By.XPATH, f"{row}//a[normalize-space(.)='{run_name}']")))
    close_assistant_panel(browser)
    assert len({element.get_attribute("row-id") for element in browser.find_elements(
        By.XPATH, "//div[@role='row'][starts-with(@row-id, 'm-')]")}) == 2  # one model per seed
    browser.find_element(By.XPATH, f"{row}//a[normalize-space(.)='model']").click()

    wait.until(expected.presence_of_element_located((By.XPATH, "//*[starts-with(normalize-space(.), 'Metrics (')]")))
    close_assistant_panel(browser)
    assert model.model_id in browser.current_url
    browser.find_element(By.CSS_SELECTOR, "input[placeholder='Search metrics']").send_keys("auc")
    wait.until(expected.invisibility_of_element_located((By.XPATH, "//span[normalize-space(.)='val_synth_b_images']")))
    for name in ("val_synth_b_auc", "test_synth_c_auc", "test_synth_c_unique_auc"):
        metric = values[name]
        line = f"//div[@role='row'][./div[@role='cell'][1][normalize-space(.)='{name}']]"
        cells = [cell.text.strip() for cell in browser.find_element(By.XPATH, line).find_elements(
            By.XPATH, "./div[@role='cell']")]
        assert cells[0] == name and cells[1].startswith(f"{metric.dataset_name} (#"), f"{name}: page shows {cells}"
        assert cells[2:] == [run_name, js_number(metric.value)], f"{name}: page shows {cells}"
    # The picture: the end of the validation site's rows and the start of the test site's.
    test_row = browser.find_element(By.XPATH, "//div[@role='row'][./div[@role='cell'][1]"
                                              "[normalize-space(.)='test_synth_c_auc']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", test_row)
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    save_screenshot(browser, served_runs, "logged_model.png")


@needs_browser
def test_compare_page_shows_auc_of_both_seeds(served_runs, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    runs = {name: run_of(served_runs, name) for name in ("run1", "run2")}
    run_ids = [run["info"]["run_id"] for run in runs.values()]
    values = {run["info"]["run_id"]: {m["key"]: m["value"] for m in run["data"]["metrics"]} for run in runs.values()}
    browser.set_window_size(1600, 1900)
    browser.get(f"{served_runs['url']}/#/compare-runs?runs={json.dumps(run_ids)}"
                f"&experiments={json.dumps([served_runs['experiment_id']])}&workflowType=machine_learning")
    wait = WebDriverWait(browser, 90)
    title = "//*[normalize-space(.)='Comparing 2 Runs from 1 Experiment']"
    wait.until(expected.presence_of_element_located((By.XPATH, title)))
    wait.until(expected.presence_of_element_located((By.XPATH, "//a[@title='Plot chart']")))
    close_assistant_panel(browser)

    # Column order of the page: the run ids of the "Run ID:" row.
    shown_ids = [link.text.strip() for link in browser.find_elements(
        By.XPATH, "//tr[th[normalize-space(.)='Run ID:']]//a") if link.text.strip() in run_ids]
    assert sorted(shown_ids) == sorted(run_ids)
    for run in runs.values():
        assert run["info"]["run_name"] in browser.find_element(By.TAG_NAME, "body").text

    # Parallel coordinates: seed against the AUC of each site.
    browser.find_element(By.CSS_SELECTOR, "button[data-testid='clear-button']").click()
    selectors = browser.find_elements(By.CSS_SELECTOR, ".du-bois-light-select-selector")
    for selector, names in ((selectors[0], ["seed"]),
                            (selectors[1], ["val_synth_b_auc", "test_synth_c_auc", "test_synth_c_unique_auc"])):
        for name in names:
            selector.click()
            selector.find_element(By.CSS_SELECTOR, "input").send_keys(name)
            wait.until(expected.element_to_be_clickable(
                (By.XPATH, f"//div[contains(@class, 'select-item-option') and @title='{name}']"))).click()
        selector.find_element(By.CSS_SELECTOR, "input").send_keys(Keys.ESCAPE)
    plot_text = browser.find_element(By.CSS_SELECTOR, ".pcp-plot").text
    assert all(name in plot_text for name in ("seed", "val_synth_b_auc", "test_synth_c_auc"))

    # Fold the long parameter table so that the metrics table comes up.
    browser.find_element(By.XPATH, "//div[@role='button'][normalize-space(.)='Parameters']").click()

    # The metrics table is virtualised (45-pixel rows): scroll it until the row is drawn.
    grids = browser.find_elements(By.CSS_SELECTOR, "div.ReactVirtualized__Grid")
    names_grid, values_grid = grids[-2], grids[-1]
    target = "test_synth_c_auc"
    find_row = ("return Array.from(arguments[0].querySelectorAll('a')).filter("
                "a => a.textContent.trim() === arguments[1]).map(a => a.parentElement.style.top)[0] || null;")
    top = None
    height = browser.execute_script("return arguments[0].firstElementChild.scrollHeight;", values_grid)
    for offset in range(0, height, 135):
        browser.execute_script("arguments[0].scrollTop = arguments[1];", values_grid, offset)
        time.sleep(0.1)
        top = browser.execute_script(find_row, names_grid, target)
        if top:
            break
    assert top, f"{target} is not in the compare page's metrics table"
    for _ in range(20):  # both grids, so that names and values line up; the page syncs them a little later
        for grid in (values_grid, names_grid):
            browser.execute_script("arguments[0].scrollTop = arguments[1];", grid, int(float(top.rstrip("px"))))
        time.sleep(0.3)
        cells = browser.execute_script(
            "return Array.from(arguments[0].firstElementChild.children).filter(c => c.style.top === arguments[1])"
            ".sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))"
            ".map(c => [c.textContent.trim(), c.getBoundingClientRect().top]);", values_grid, top)
        name_top = browser.execute_script(
            "return Array.from(arguments[0].querySelectorAll('a')).filter(a => a.textContent.trim() === "
            "arguments[1]).map(a => a.parentElement.getBoundingClientRect().top)[0];", names_grid, target)
        if name_top is not None and cells and all(abs(cell_top - name_top) < 2 for _, cell_top in cells):
            break
    expected_cells = [mlflow_compare_format(values[run_id][target]) for run_id in shown_ids]
    assert [text for text, _ in cells] == expected_cells, f"{target}: page shows {cells}, runs have {expected_cells}"
    assert all(abs(cell_top - name_top) < 2 for _, cell_top in cells), \
        f"metric name (at {name_top}) and values {cells} are not on one line"

    browser.execute_script("window.scrollTo(0, 0)")  # plot, run names and the metrics row in one picture
    time.sleep(0.5)
    save_screenshot(browser, served_runs, "compare.png")
