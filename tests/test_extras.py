"""Extras by role: a command whose role's extra is not installed stops with one line naming the extra.

The commands run in a subprocess of the dev venv's python with the role's package made unimportable
(`sys.modules[name] = None`, what Python does for a module that is not there: ModuleNotFoundError); the fresh
install of the `cloud` extra alone is `make check-cloud` (deploy/check_cloud.sh).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from contracts.errors import MissingExtra
from contracts.extras import EXTRA_OF, missing_extra

ROOT = Path(__file__).resolve().parent.parent
BLOCKED_RUN = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from edgeloop.cli import main
sys.argv = ["edgeloop", *sys.argv[2:]]
main()
"""


def run_without(modules: list[str], *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"EDGELOOP_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "120"}
    command = [sys.executable, "-c", BLOCKED_RUN, ",".join(modules), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        (["mlflow", "sklearn", "pandas"], ["train", "--data", "data.csv"], "train"),
        (["mlflow"], ["convert", "machine-failure@champion", "--out", "bundle"], "train"),
        (["pyarrow"], ["score", "--model", "bundle", "--input", "in.csv", "--output", "out.parquet"], "batch"),
    ],
)
def test_a_command_of_a_missing_role_names_its_extra(
    blocked: list[str], args: list[str], extra: str, tmp_path: Path
) -> None:
    result = run_without(blocked, *args, home=tmp_path)
    assert result.returncode == MissingExtra.exit_code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    pattern = rf"error: `edgeloop {args[0]}` needs \S+, which is not installed: pip install 'edgeloop\[{extra}\]'"
    assert re.fullmatch(pattern, errors[0]), errors[0]


def test_a_missing_module_of_no_extra_is_not_blamed_on_an_extra() -> None:
    assert missing_extra(ModuleNotFoundError("No module named 'numpy'", name="numpy"), "`edgeloop x`") is None
    found = missing_extra(ModuleNotFoundError("No module named 'sklearn.tree'", name="sklearn.tree"), "convert")
    assert found is not None and found.message == (
        "convert needs scikit-learn, which is not installed: pip install 'edgeloop[train]'"
    )


def test_each_package_is_in_the_extra_the_message_names() -> None:
    """contracts/extras.py and pyproject.toml agree: the extra a message names installs the package."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (package, extra) in EXTRA_OF.items():
        names = {re.split(r"[<>=\[ ]", requirement)[0].lower() for requirement in extras[extra]}
        assert package.lower() in names, f"{module}: {package} is not in the {extra!r} extra ({sorted(names)})"
    cloud = {re.split(r"[<>=\[ ]", requirement)[0].lower() for requirement in extras["cloud"]}
    assert not cloud & {"mlflow", "scikit-learn", "skl2onnx", "onnx", "pandas", "pyarrow", "plotly"}, cloud
    assert extras["all"] == ["edgeloop[cloud,train,batch,spark]"]


def test_a_cloud_without_the_train_extra_says_at_start_that_retraining_will_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cloud_sync.loop.retrain_triggers import PolicyTriggers, RetrainTriggers
    from cloud_sync.store.db import Store

    store = Store(f"sqlite:///{tmp_path / 'cloud.db'}").create()
    policy = [PolicyTriggers(tmp_path / "retrain.yaml", "machine-failure", schedule_s=60.0)]
    try:
        with caplog.at_level("WARNING", logger="edgeloop.cloud.retrain"):
            RetrainTriggers(store, policy, "http://127.0.0.1:8700", None, tmp_path / "jobs")
            assert not [r for r in caplog.records if "retrain jobs will fail" in r.getMessage()]  # mlflow is here
            monkeypatch.setitem(sys.modules, "mlflow", None)  # as in a `pip install 'edgeloop[cloud]'`
            RetrainTriggers(store, policy, "http://127.0.0.1:8700", None, tmp_path / "jobs")
        warned = [r.__dict__["fields"] for r in caplog.records if r.getMessage() == "retrain jobs will fail"]
        assert warned == [{"reason": "retraining (retrain_policies) needs mlflow, which is not installed: "
                                     "pip install 'edgeloop[train]'"}], warned  # fmt: skip
    finally:
        store.dispose()
