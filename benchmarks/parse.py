"""DAG parse cost: each file in dags/ next to a bare DAG with the same number of tasks.

The DAG processor parses each file in a process that has already imported Airflow, so the
one-off Airflow import is excluded: a fresh child process imports Airflow, then times
``DagBag(dag_folder=<file>)`` on its first (cold: the project's imports are paid) and later (warm)
parses. The baseline is a generated file with the same task count that imports only
``airflow.sdk``. Prints medians over several children, the ratio project/baseline and peak RSS.
Goal: under 200 ms per DAG file.

    .venv/bin/python benchmarks/parse.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk  # noqa: F401  (already paid by the processor)
import tempfile
path = sys.argv[1]
DagBag(dag_folder=tempfile.mkdtemp())  # DagBag's own one-off set-up is not the file's cost
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); bag = DagBag(dag_folder=path); cold = time.perf_counter() - t0
warm = []
for _ in range(3):
    t0 = time.perf_counter(); DagBag(dag_folder=path); warm.append(time.perf_counter() - t0)
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tasks = sum(len(d.tasks) for d in bag.dags.values())
print(json.dumps({"cold": cold, "warm": min(warm), "errors": len(bag.import_errors), "tasks": tasks,
                  "rss_growth_kb": rss1 - rss0}))
"""

BASELINE = '''
from __future__ import annotations
from datetime import datetime, timezone
from airflow.sdk import dag, task

@dag(dag_id="baseline_{n}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), tags=["b"])
def baseline():
{tasks}

baseline()
'''


def measure(path: Path, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def baseline_file(directory: Path, tasks: int) -> Path:
    body = "\n".join(f"    @task\n    def t{i}() -> int:\n        return {i}\n    t{i}()" for i in range(max(tasks, 1)))
    path = directory / f"baseline_{tasks}.py"
    path.write_text(BASELINE.format(n=tasks, tasks=body))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bench-parse-")
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db"}  # fmt: skip
    files = sorted((ROOT / "dags").glob("*.py"))
    print(f"{'DAG file':<34}{'tasks':>6}{'cold ms':>10}{'warm ms':>10}{'base cold':>11}{'ratio':>7}{'RSS+ MB':>9}")
    worst = 0.0
    for path in files:
        runs = [measure(path, env) for _ in range(args.repeat)]
        if runs[0]["errors"]:
            print(f"{path.name}: import errors")
            return 1
        tasks = int(runs[0]["tasks"])
        base = [measure(baseline_file(Path(home), tasks), env) for _ in range(args.repeat)]
        cold = statistics.median(r["cold"] for r in runs) * 1000
        warm = statistics.median(r["warm"] for r in runs) * 1000
        base_cold = statistics.median(r["cold"] for r in base) * 1000
        rss = statistics.median(r["rss_growth_kb"] for r in runs) / 1024
        worst = max(worst, cold)
        print(f"{path.name:<34}{tasks:>6}{cold:>10.1f}{warm:>10.1f}{base_cold:>11.1f}{cold / base_cold:>7.2f}{rss:>9.1f}")
    print(f"\nslowest cold parse {worst:.1f} ms per file (goal < 200 ms); medians of {args.repeat} child processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
