"""Take the README's screenshots in a real browser: the MLflow UI (runs table, compare view,
chart view), optuna-dashboard on a study, and the harness's report.

    .venv/bin/python docs/screenshots.py [--browser chromium-headless-shell]

Needs a headless Chromium (Debian: ``apt-get install chromium-headless-shell``) and the
``dashboard`` extra. Everything runs on ``digits`` in a temporary folder (a few minutes on 2
cores): four runs of different methods, a 6-trial study, the report; then ``mlflow ui`` and
``optuna-dashboard`` are started on 127.0.0.1 and each page is saved as a PNG under docs/img/.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

DOCS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RUNS = [
    ["--method", "ann"],
    ["--method", "rate", "--set", "timesteps=32"],
    ["--method", "ttfs"],
    ["--method", "surrogate", "--set", "epochs=8", "--set", "timesteps=4"],
]
COMMON = ["--dataset", "digits", "--model", "dnn5", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(argv: list[str], url: str, env: dict[str, str]):
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{argv[0]} did not answer on {url}") from None
                time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def shoot(browser: str, url: str, out: Path, size: str = "1400,1000", wait_ms: int = 20000) -> None:
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                          capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{browser} failed on {url}:\n{proc.stderr[-2000:]}")
    print(f"wrote {out.relative_to(DOCS.parent)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--browser", default="chromium-headless-shell")
    ap.add_argument("--work", help="keep the runs in this folder (made once, reused when it holds them)")
    args = ap.parse_args()
    img = DOCS / "img"
    img.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="harness-shots-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{work}/mlruns.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        harness = [str(BIN / "harness")]
        storage = f"sqlite:///{work}/optuna.db"
        if not (work / "report" / "report.html").exists():
            for extra in RUNS:
                subprocess.run(harness + ["run", *extra, *COMMON], cwd=work, env=env, check=True,
                               stdout=subprocess.DEVNULL)
            subprocess.run(harness + ["study", "--method", "ttfs", "--trials", "6", "--sampler", "random",
                                      "--storage", storage, "--set", "fig2=false", *COMMON],
                           cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
            subprocess.run(harness + ["report", "--out", str(work / "report")], cwd=work, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        shoot(args.browser, (work / "report" / "report.html").as_uri(), img / "report.png", "1400,1400", 5000)

        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("snn-harness")
        plain = [r for r in client.search_runs([exp.experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("harness.kind") != "study"]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with server([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--port", str(port)], base, env):
            # MLflow 3's UI opens experiments in its GenAI view unless told otherwise (the
            # workflowType parameter; the "Model training" switch remembers it in the browser)
            ml = "workflowType=machine_learning"
            shoot(args.browser, f"{base}/#/experiments/{exp.experiment_id}/runs?{ml}", img / "mlflow-runs.png")
            ids = json.dumps([r.info.run_id for r in plain])
            query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([exp.experiment_id]),
                                            "workflowType": "machine_learning"})
            shoot(args.browser, f"{base}/#/compare-runs?{query}", img / "mlflow-compare.png", "1400,1400")
            shoot(args.browser, f"{base}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART&{ml}",
                  img / "mlflow-charts.png", "1400,1200")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with server([str(BIN / "optuna-dashboard"), storage, "--port", str(port)], base, env):
            shoot(args.browser, f"{base}/dashboard/studies/1", img / "optuna-dashboard.png", "1400,1100")


if __name__ == "__main__":
    main()
