"""The continuous-delivery template (deploy/ci/github-actions/edgeloop-cd.yml) is a workflow that can run.

No GitHub here (and no actionlint), so what can be checked locally is: the YAML parses; the four jobs run
train -> convert -> build -> deploy through `needs`; the image is built for linux/arm64 and linux/amd64; every
secret and variable it reads is documented in its header; the MLflow URI, the signing key and the cloud token
come from secrets; every `edgeloop ...` command line in it, with the workflow's own defaults filled in, is
accepted by the real CLI (each option exists in that subcommand's --help, and Click parses and converts the
whole line). Then the train and convert steps' shell scripts run for real, in bash, against a local MLflow
store: the version printed by `edgeloop train` reaches the convert job and a signed bundle comes out.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main
import yaml
from typer.testing import CliRunner

from edgeloop.cli import app

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "deploy" / "ci" / "github-actions" / "edgeloop-cd.yml"
ORDER = ["train", "convert", "build", "deploy"]
# What a runner provides, and stand-ins for expressions only GitHub can evaluate.
RUNNER_ENV = {"RUNNER_TEMP": "/tmp/runner", "GITHUB_OUTPUT": "/tmp/out", "GITHUB_STEP_SUMMARY": "/tmp/summary"}
STAND_INS = {"needs.train.outputs.version": "7"}
HELP_ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def _workflow() -> dict[str, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _expression(value: str) -> str:
    """A `${{ ... }}` value as the workflow runs it with no variable set: the `|| 'default'`, else a stand-in."""

    def one(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        default = re.search(r"\|\|\s*'([^']*)'\s*$", inner)
        if default:
            return default.group(1)
        return STAND_INS.get(inner, "stand-in-" + inner.split(".")[-1].lower())

    return re.sub(r"\$\{\{(.*?)\}\}", one, str(value))


def _env(workflow: dict[str, Any], job: dict[str, Any], step: dict[str, Any]) -> dict[str, str]:
    env = dict(RUNNER_ENV)
    for scope in (workflow.get("env", {}), job.get("env", {}), step.get("env", {})):
        env.update({key: _expression(value) for key, value in scope.items()})
    return env


def _steps() -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(job name, step, resolved env) of every `run:` step."""
    workflow = _workflow()
    return [
        (name, step, _env(workflow, job, step))
        for name, job in workflow["jobs"].items()
        for step in job["steps"]
        if "run" in step
    ]


def _expand(line: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in env, f"${name} is not defined in the workflow's env (line: {line})"
        return env[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, line)


def _edgeloop_lines() -> list[tuple[str, str, list[str]]]:
    """(job, the command line as written, argv after `edgeloop` as bash would pass it) for every invocation."""
    found = []
    for job, step, env in _steps():
        script = step["run"].replace("\\\n", " ")
        for line in script.splitlines():
            if not re.match(r"\s*edgeloop\s", line):
                continue
            lexer = shlex.shlex(_expand(line.strip(), env), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
            end = next((i for i, t in enumerate(tokens) if set(t) <= set("|;&<>")), len(tokens))
            found.append((job, line.strip(), tokens[1:end]))
    return found


def _split_path(argv: list[str]) -> tuple[list[str], list[str], Any]:
    """(subcommand path, its arguments, the Click command) by walking the real app's command tree."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    while argv and argv[0] in getattr(command, "commands", {}):
        command = command.commands[argv[0]]
        path.append(argv[0])
        argv = argv[1:]
    return path, argv, command


def test_the_workflow_parses_and_its_jobs_run_in_order() -> None:
    workflow = _workflow()
    jobs = workflow["jobs"]
    assert list(jobs) == ORDER
    assert _needs(jobs["train"]) == []
    for before, after in itertools.pairwise(ORDER):
        assert before in _needs(jobs[after]), f"job {after} does not need {before}"

    def ancestors(name: str) -> set[str]:
        return {parent for need in _needs(jobs[name]) for parent in {need, *ancestors(need)}}

    for index, name in enumerate(ORDER):
        assert ancestors(name) == set(ORDER[:index]), (name, ancestors(name))
    # A job may read `needs.X.outputs` only for a job X it needs directly (GitHub's rule).
    for name, job in jobs.items():
        for used in re.findall(r"needs\.(\w+)\.outputs\.(\w+)", json.dumps(job)):
            assert used[0] in _needs(job), f"{name} reads needs.{used[0]} without needing it"
            assert used[1] in jobs[used[0]].get("outputs", {}), f"{used[0]} has no output {used[1]}"
    assert True in workflow or "on" in workflow  # PyYAML reads the bare `on:` key as the boolean True
    assert workflow["defaults"]["run"]["shell"] == "bash"  # -eo pipefail: `edgeloop ... | tee` fails the step


def test_the_agent_image_is_built_for_arm64_and_amd64_and_pushed() -> None:
    build = _workflow()["jobs"]["build"]
    uses = [step.get("uses", "").split("@")[0] for step in build["steps"]]
    assert {"docker/setup-qemu-action", "docker/setup-buildx-action", "docker/login-action"} <= set(uses)
    (step,) = [s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert uses.index("docker/setup-buildx-action") < uses.index("docker/build-push-action")
    platforms = {p.strip() for p in step["with"]["platforms"].split(",")}
    assert {"linux/arm64", "linux/amd64"} <= platforms
    assert step["with"]["file"] == "Dockerfile.edge" and (ROOT / "Dockerfile.edge").is_file()
    assert step["with"]["push"] is True
    assert build["env"]["IMAGE"].startswith("${{ vars.REGISTRY }}/")
    tags = step["with"]["tags"].splitlines()
    assert tags and all(tag.startswith("${{ env.IMAGE }}:") for tag in tags), tags
    login = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "${{ vars.REGISTRY }}"


def test_secrets_and_variables_are_documented_and_sensitive_values_come_from_secrets() -> None:
    text = WORKFLOW.read_text()
    header = text.split("\nname:", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines())
    secrets = set(re.findall(r"secrets\.(\w+)", text)) - {"GITHUB_TOKEN"}
    variables = set(re.findall(r"vars\.(\w+)", text))
    assert {"MLFLOW_TRACKING_URI", "EDGELOOP_SIGNING_KEY", "EDGELOOP_CLOUD_URL", "EDGELOOP_CLOUD_TOKEN"} <= secrets
    assert "REGISTRY" in variables
    for name in secrets | variables:
        assert re.search(rf"^#\s+{name}\s", header, flags=re.MULTILINE), f"{name} is not documented in the header"
    jobs = _workflow()["jobs"]
    for job in ("train", "convert"):
        assert jobs[job]["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    assert jobs["convert"]["env"]["EDGELOOP_SIGNING_KEY"] == "${{ secrets.EDGELOOP_SIGNING_KEY }}"
    assert jobs["deploy"]["env"]["EDGELOOP_CLOUD_TOKEN"] == "${{ secrets.EDGELOOP_CLOUD_TOKEN }}"
    for job, step, _ in _steps():
        # No expression inside a script (script injection), no token on a command line (process listings).
        assert "${{" not in step["run"], (job, step["run"])
        assert "--token" not in step["run"], (job, step["run"])


def test_every_edgeloop_command_line_is_accepted_by_the_real_cli() -> None:
    lines = _edgeloop_lines()
    paths = {" ".join(_split_path(argv)[0]) for _job, _line, argv in lines}
    assert paths == {"sample-data", "train", "convert", "deploy", "rollout status"}, paths
    assert any("--canary" in argv for _j, _l, argv in lines if argv[0] == "deploy")
    assert any("--min-metric" in argv for _j, _l, argv in lines if argv[0] == "convert")
    runner = CliRunner()
    for job, line, argv in lines:
        path, rest, command = _split_path(argv)
        shown = runner.invoke(app, [*path, "--help"], env=HELP_ENV)
        assert shown.exit_code == 0, shown.output
        for option in (token.split("=")[0] for token in rest if token.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", shown.output), (
                f"{job}: `{line}` uses {option}, which `edgeloop {' '.join(path)} --help` does not list"
            )
        # The parser itself accepts the line (unknown options, missing values and arity fail with exit 2) ...
        parsed = runner.invoke(app, [*path, *rest, "--help"], env=HELP_ENV)
        assert parsed.exit_code == 0, f"{job}: `{line}` -> {parsed.output}"
        # ... and Click converts every value and finds every required option, without running the command.
        with command.make_context(f"edgeloop {' '.join(path)}", list(rest)) as context:
            assert context.params, line


def test_the_train_and_convert_steps_run_in_bash(tmp_path: Path, machines_csv: Path) -> None:
    """The train job's script registers a version and hands it over; the convert job's script signs a bundle."""
    from contracts.signing import generate_keypair

    keys, _public = generate_keypair(tmp_path / "signer")
    workspace = tmp_path / "repo"
    (workspace / "data").mkdir(parents=True)
    (workspace / "data" / "machines.csv").write_bytes(machines_csv.read_bytes())  # skips the sample-data step
    runner_temp = tmp_path / "runner"
    runner_temp.mkdir()
    base = {key: value for key, value in os.environ.items() if not key.startswith(("EDGELOOP_", "MLFLOW_"))}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"
    local = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "EDGELOOP_SIGNING_KEY": keys.read_text(),
        "EDGELOOP_HOME": str(tmp_path / "home"),
        "EDGELOOP_LOG_LEVEL": "WARNING",
    }
    outputs: dict[str, str] = {}
    for job, step, env in _steps():
        if job not in ("train", "convert") or "pip install" in step["run"]:
            continue
        output = tmp_path / f"{job}.output"
        env = {key: value for key, value in env.items() if not value.startswith("stand-in-")}
        env.update(RUNNER_TEMP=str(runner_temp), GITHUB_OUTPUT=str(output), GITHUB_STEP_SUMMARY=str(tmp_path / "sum"))
        env.update(VERSION=outputs.get("version", ""), MODEL_FAMILY="logreg")  # logreg: the fastest family
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace,
            env={**base, **env, **local},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, f"{job} / {step.get('name')}:\n{done.stdout}\n{done.stderr}"
        if output.exists():
            outputs.update(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    assert outputs["version"] == "1"
    bundle = workspace / "bundles" / "machine-failure"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["name"], manifest["version"]) == ("machine-failure", 1)
    assert (bundle / "manifest.sig").is_file() and not (runner_temp / "keys").exists()


def test_a_readme_sits_next_to_the_workflow() -> None:
    text = (WORKFLOW.parent / "README.md").read_text()
    assert "edgeloop-cd.yml" in text and ".github/workflows/" in text
