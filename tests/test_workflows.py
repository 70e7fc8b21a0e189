"""The GitHub workflows do what the README promises (zizmor and the schemas check the rest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _readme_commands() -> list[str]:
    """The commands in the README's "two commands" block."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The two commands\s+```bash\n(.*?)```", readme, re.S)
    assert block, "README lost its 'The two commands' block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["test.yml", "publish.yml"])
def test_every_action_is_pinned_to_a_commit(name: str) -> None:
    for step in _steps(_load(name)):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


@pytest.mark.parametrize("name", ["test.yml", "publish.yml"])
def test_every_job_has_a_timeout_and_its_own_permissions(name: str) -> None:
    workflow = _load(name)
    assert workflow["permissions"] == {}, "top-level permissions must be empty"
    for job_name, job in workflow["jobs"].items():
        # CI's 90 minutes, except the weekly robustness run (4 executions of the book)
        limit = 180 if job_name == "robustness" else 90
        assert 0 < job["timeout-minutes"] <= limit, job_name
        assert "permissions" in job, job_name


def test_test_workflow_runs_the_readme_test_command() -> None:
    readme = _readme_commands()
    assert "make test" in readme and "make book" in readme, readme
    workflow = _load("test.yml")
    triggers = workflow[True]  # PyYAML reads the key `on` as the boolean True
    assert {"push", "pull_request", "schedule"} <= set(triggers)
    runs = [step.get("run", "").strip() for step in workflow["jobs"]["test"]["steps"]]
    assert "make test" in runs
    assert workflow["jobs"]["test"]["container"].startswith("python:3.11-")


def test_robustness_runs_weekly_and_by_hand_not_on_every_push() -> None:
    job = _load("test.yml")["jobs"]["robustness"]
    assert "schedule" in job["if"] and "workflow_dispatch" in job["if"] and "push" not in job["if"]
    runs = [step.get("run", "").strip() for step in job["steps"]]
    assert any(run.startswith("make robustness") for run in runs), runs


def test_publish_workflow_builds_with_make_book_and_deploys_the_html() -> None:
    workflow = _load("publish.yml")
    assert workflow[True]["push"]["branches"] == ["main"]
    build = workflow["jobs"]["build"]
    assert "make book" in [step.get("run", "").strip() for step in build["steps"]]
    upload = [s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["needs"] == "build"
