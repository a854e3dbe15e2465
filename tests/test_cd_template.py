"""The continuous-delivery template (deploy/ci/github-actions/edgeloop-cd.yml) is a workflow that can run.

No GitHub here (and no actionlint), so what can be checked locally is: the YAML parses; the four jobs run
train -> convert -> build -> deploy through `needs`; the image is built for linux/arm64 and linux/amd64; every
secret and variable it reads is documented in its header; the MLflow URI, the signing key and the cloud token
come from secrets, each given only to the steps that use it (never to a job, never on a command line, never
to `pip install`), the signing key to the one step that writes the key file; the token may write packages in
the build job only; edgeloop's ref defaults to this release's tag and the actions are pinned or flagged for
pinning; every `edgeloop ...` command line in it, with the workflow's own defaults filled in, is accepted by
the real CLI (each option exists in that subcommand's --help, and Click parses and converts the whole line).
Then the train and convert steps' shell scripts run for real, in bash, with the secrets resolved through the
workflow's own expressions to a local MLflow store and a key pair the test makes: the tracking URI reaches
edgeloop through the variable the workflow sets, the version printed by `edgeloop train` reaches the convert
job, and the bundle's signature verifies with the test's public key; without the key file, convert fails.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from contracts.errors import IntegrityError
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


def _expression(value: str, secrets: dict[str, str] | None = None) -> str:
    """A `${{ ... }}` value as the workflow runs it with no variable set: the `|| 'default'`, a secret from
    `secrets`, else a stand-in."""

    def one(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        default = re.search(r"\|\|\s*'([^']*)'\s*$", inner)
        if default:
            return default.group(1)
        if inner.startswith("secrets.") and secrets is not None and inner.removeprefix("secrets.") in secrets:
            return secrets[inner.removeprefix("secrets.")]
        return STAND_INS.get(inner, "stand-in-" + inner.split(".")[-1].lower())

    return re.sub(r"\$\{\{(.*?)\}\}", one, str(value))


def _env(
    workflow: dict[str, Any], job: dict[str, Any], step: dict[str, Any], secrets: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(RUNNER_ENV)
    for scope in (workflow.get("env", {}), job.get("env", {}), step.get("env", {})):
        env.update({key: _expression(value, secrets) for key, value in scope.items()})
    return env


def _steps(secrets: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(job name, step, resolved env) of every `run:` step."""
    workflow = _workflow()
    return [
        (name, step, _env(workflow, job, step, secrets))
        for name, job in workflow["jobs"].items()
        for step in job["steps"]
        if "run" in step
    ]


def _secret_names(scope: dict[str, Any]) -> set[str]:
    """The secrets an env mapping reads."""
    return {name for value in scope.values() for name in re.findall(r"secrets\.(\w+)", str(value))}


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
    for job, step, _ in _steps():
        # No expression inside a script (script injection), no token on a command line (process listings).
        assert "${{" not in step["run"], (job, step["run"])
        assert "--token" not in step["run"] and "--tracking-uri" not in step["run"], (job, step["run"])


def _step_named(job: dict[str, Any], fragment: str) -> dict[str, Any]:
    (step,) = [step for step in job["steps"] if fragment in step.get("name", "")]
    return step


def test_each_secret_reaches_only_the_steps_that_use_it() -> None:
    """Not the workflow, not a job (so not `pip install`, an action or another step): the step's own env."""
    from converter.settings import ConvertSettings
    from trainer.settings import TrainSettings

    workflow = _workflow()
    jobs = workflow["jobs"]
    assert _secret_names(workflow.get("env", {})) == set()
    for name, job in jobs.items():
        assert _secret_names(job.get("env", {})) == set(), f"job {name} gives secrets to all its steps"
        for step in job["steps"]:
            if "pip install" in step.get("run", "") or "uses" in step:
                assert _secret_names(step.get("env", {})) == set(), (name, step)
            if not step.get("uses", "").startswith("docker/login-action@"):  # the one action given a secret
                assert _secret_names(step.get("with", {})) == set(), (name, step)
            for variable, value in step.get("env", {}).items():
                # A secret's variable is never expanded on a command line (process listings, `set -x`).
                if "secrets." in str(value) and "run" in step:
                    for line in step["run"].splitlines():
                        if re.match(r"\s*edgeloop\s", line):
                            assert f"${variable}" not in line and f"${{{variable}}}" not in line, (name, line)
    # The signing key: one step, the one that writes the key file, and it runs no edgeloop command.
    with_key = [
        (name, step)
        for name, job in jobs.items()
        for step in job["steps"]
        if "EDGELOOP_SIGNING_KEY" in _secret_names(step.get("env", {}))
    ]
    assert len(with_key) == 1, with_key
    key_job, key_step = with_key[0]
    assert key_job == "convert" and "edgeloop-signing.key" in key_step["run"]
    assert not any(re.match(r"\s*edgeloop\s", line) for line in key_step["run"].splitlines())
    assert "--require-key" in _step_named(jobs["convert"], "Convert")["run"]
    # The tracking URI: under the name edgeloop's settings read (EDGELOOP_TRACKING_URI), in train and convert.
    wanted = "${{ secrets.MLFLOW_TRACKING_URI }}"
    for settings in (TrainSettings, ConvertSettings):
        assert "EDGELOOP_TRACKING_URI" in [row[0] for row in settings.describe()]
    for job, fragment in (("train", "Train"), ("convert", "Convert")):
        env = _step_named(jobs[job], fragment)["env"]
        assert env["EDGELOOP_TRACKING_URI"] == wanted and "MLFLOW_TRACKING_URI" not in env, env
    for argv in (["deploy"], ["rollout", "status"]):  # the cloud's URL and token: read from the environment
        envvars = {param.envvar for param in _split_path(argv)[2].params}
        assert {"EDGELOOP_CLOUD_URL", "EDGELOOP_CLOUD_TOKEN"} <= envvars, (argv, envvars)
    for fragment in ("Deploy", "Rollout status"):
        assert (
            _step_named(jobs["deploy"], fragment)["env"]["EDGELOOP_CLOUD_TOKEN"]
            == "${{ secrets.EDGELOOP_CLOUD_TOKEN }}"
        )


def test_permissions_are_per_job_and_only_build_may_write() -> None:
    workflow = _workflow()
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        expected = {"contents": "read", "packages": "write"} if name == "build" else {"contents": "read"}
        assert job.get("permissions") == expected, (name, job.get("permissions"))


def test_edgeloop_and_the_actions_are_pinned_or_flagged() -> None:
    """EDGELOOP_REF defaults to this release's tag (never a branch); an action is pinned by a full commit SHA
    with its version in a comment, or the header tells the user to pin it (no made-up SHA)."""
    text = WORKFLOW.read_text()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    default_ref = _expression(_workflow()["env"]["EDGELOOP_REF"])
    assert default_ref == f"v{version}" or re.fullmatch(r"[0-9a-f]{40}", default_ref), default_ref
    header = text.split("\nname:", 1)[0]
    assert "EDGELOOP_REF" in header and "never a branch" in header
    uses = re.findall(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$", text, flags=re.MULTILINE)
    assert len(uses) >= 10, uses
    for action, comment in uses:
        ref = action.split("@", 1)[1]
        if re.fullmatch(r"[0-9a-f]{40}", ref):
            assert re.search(r"#\s*v\d", comment), f"{action}: say which version the SHA is"
        else:
            assert re.fullmatch(r"v\d+", ref), action
            assert "full commit SHA" in header, f"{action} is pinned by tag and the header does not say to pin it"
    readme = (WORKFLOW.parent / "README.md").read_text()
    assert "full commit SHA" in readme and "EDGELOOP_REF" in readme
    # A checkout does not leave the token in .git/config (the build context, installed code).
    for name, job in _workflow()["jobs"].items():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name


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


def _run_step(step: dict[str, Any], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_train_and_convert_steps_run_in_bash(tmp_path: Path, machines_csv: Path) -> None:
    """The train job's script registers a version and hands it over; the convert job's script signs a bundle
    that verifies with the public key of the pair the test put in the secret."""
    from mlflow.tracking import MlflowClient

    from contracts.bundle import load_bundle
    from contracts.signing import generate_keypair, load_public_key

    keys, public = generate_keypair(tmp_path / "signer")
    workspace = tmp_path / "repo"
    (workspace / "data").mkdir(parents=True)
    (workspace / "data" / "machines.csv").write_bytes(machines_csv.read_bytes())  # skips the sample-data step
    runner_temp = tmp_path / "runner"
    runner_temp.mkdir()
    base = {key: value for key, value in os.environ.items() if not key.startswith(("EDGELOOP_", "MLFLOW_"))}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"
    home = tmp_path / "home"  # edgeloop's defaults (tracking store, keys) would land here: they must not
    local = {"EDGELOOP_HOME": str(home), "EDGELOOP_LOG_LEVEL": "WARNING"}
    # The secrets, given to the steps only through the workflow's own `${{ secrets.X }}` expressions.
    store = tmp_path / "mlflow.db"
    secrets = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}", "EDGELOOP_SIGNING_KEY": keys.read_text()}
    outputs: dict[str, str] = {}
    convert_step: tuple[dict[str, Any], dict[str, str]] | None = None
    for job, step, env in _steps(secrets):
        if job not in ("train", "convert") or "pip install" in step["run"]:
            continue
        output = tmp_path / f"{job}.output"
        env = {key: value for key, value in env.items() if not value.startswith("stand-in-")}
        env.update(RUNNER_TEMP=str(runner_temp), GITHUB_OUTPUT=str(output), GITHUB_STEP_SUMMARY=str(tmp_path / "sum"))
        env.update(VERSION=outputs.get("version", ""), MODEL_FAMILY="logreg")  # logreg: the fastest family
        if "edgeloop convert" in step["run"]:
            convert_step = (step, {**base, **env, **local})
        done = _run_step(step, {**base, **env, **local}, workspace)
        assert done.returncode == 0, f"{job} / {step.get('name')}:\n{done.stdout}\n{done.stderr}"
        if output.exists():
            outputs.update(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    assert outputs["version"] == "1"
    # The URI reached edgeloop through the variable the workflow sets: the version is in the secret's store.
    registered = MlflowClient(secrets["MLFLOW_TRACKING_URI"]).get_registered_model("machine-failure")
    assert registered.name == "machine-failure"
    assert not (home / "mlflow.db").exists() and not (home / "keys").exists()
    bundle_dir = workspace / "bundles" / "machine-failure"
    bundle = load_bundle(bundle_dir, load_public_key(public))  # raises unless the signature verifies
    assert bundle.signed and (bundle.manifest.name, bundle.manifest.version) == ("machine-failure", 1)
    assert not (runner_temp / "keys").exists()  # the removal step ran
    # Another key pair does not verify it: the signature is the secret's key's, not a new one's.
    _other_private, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(IntegrityError, match="signature"):
        load_bundle(bundle_dir, load_public_key(other_public))

    # Without the key file (the key step skipped or the secret empty), convert fails, signs nothing, makes no key.
    assert convert_step is not None
    step, env = convert_step
    env["VERSION"] = "1"
    (workspace / "bundles").rename(tmp_path / "first-bundles")
    done = _run_step(step, env, workspace)
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "require_key" in errors[0] and "Traceback" not in done.stderr, done.stderr
    assert not (workspace / "bundles" / "machine-failure").exists() and not (runner_temp / "keys").exists()


def test_a_readme_sits_next_to_the_workflow() -> None:
    text = (WORKFLOW.parent / "README.md").read_text()
    assert "edgeloop-cd.yml" in text and ".github/workflows/" in text
