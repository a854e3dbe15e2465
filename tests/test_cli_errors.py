"""Every error of issue 2, driven through the `edgeloop` command line: a non-zero exit code, one
`error: ...` line on stderr, no traceback, and no partial bundle directory left behind by `convert`.

Most cases call the real entry point (`edgeloop.cli.main`, with its error handler) in-process; a few run
the installed `.venv/bin/edgeloop` in a subprocess to prove nothing else reaches stderr.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pandas as pd
import pytest

from contracts.bundle import load_bundle
from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from contracts.signing import load_public_key
from tests.cli_helpers import Cli, CliResult, assert_one_line_error, run_edgeloop, run_edgeloop_subprocess
from tests.conftest import TrainedBundle, free_port

INPUT, NOT_FOUND, INTEGRITY, CONVERSION, UNAVAILABLE = 2, 3, 4, 5, 6


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    home = tmp_path / "home"

    def run(*args: str) -> CliResult:
        return run_edgeloop(list(args), monkeypatch, capsys, home)

    return run


def _small_frame(rows: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "temperature": [20.0 + i % 7 for i in range(rows)],
            "site": ["lyon" if i % 3 else "graz" for i in range(rows)],
            "y": [i % 2 for i in range(rows)],
        }
    )


# --- edgeloop train: bad data -------------------------------------------------------------------------


def test_missing_file(cli: Cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("train", "--data", str(tmp_path / "nope.csv"), "--target", "y"), NOT_FOUND, "not found")


def test_unreadable_file(cli: Cli, tmp_path: Path) -> None:
    """chmod 000 when not root; root reads anything, so then the file is unreadable as text (UTF-16)."""
    path = tmp_path / "locked.csv"
    _small_frame().to_csv(path, index=False)
    if os.geteuid() != 0:
        path.chmod(0)
        expected = "permission denied"
    else:
        path.write_bytes(path.read_text().encode("utf-16"))
        expected = "is not a readable CSV file"
    assert_one_line_error(cli("train", "--data", str(path), "--target", "y"), INPUT, str(path), expected)


def test_a_directory_instead_of_a_file(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "data.csv"
    folder.mkdir()
    assert_one_line_error(cli("train", "--data", str(folder), "--target", "y"), INPUT, "is a directory")


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("empty.csv", b"", ("is empty",)),
        ("header.csv", b"temperature,site,y\n", ("has no rows",)),
        ("binary.csv", bytes(range(128, 256)) * 20, ("is not a readable CSV file",)),
        ("ragged.csv", b"a,b,y\n1,2,0\n1,2,3,4,5\n", ("is not a readable CSV file", "Expected 3 fields")),
        ("garbage.parquet", b"PAR1 this is not parquet at all " * 10, ("is not a readable Parquet file",)),
        ("table.xlsx", b"PK\x03\x04", ("unsupported file type '.xlsx'",)),
    ],
)
def test_bad_files(cli: Cli, tmp_path: Path, name: str, content: bytes, fragments: tuple[str, ...]) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert_one_line_error(cli("train", "--data", str(path), "--target", "y"), INPUT, *fragments)


def test_target_column_absent(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _small_frame().to_csv(path, index=False)
    result = cli("train", "--data", str(path), "--target", "failure")
    assert_one_line_error(result, INPUT, "target column 'failure' is not in", "temperature, site, y")


def test_target_with_one_class(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    _small_frame().assign(y="ok").to_parquet(path)
    line = assert_one_line_error(cli("train", "--data", str(path), "--target", "y"), INPUT, "single class (ok)")
    assert "np." not in line


def test_a_class_with_a_single_row(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    frame = _small_frame()
    frame.loc[0, "y"] = 7
    frame.to_csv(path, index=False)
    assert_one_line_error(cli("train", "--data", str(path), "--target", "y"), INPUT, "class 7 of 'y' has a single row")


def test_a_column_entirely_missing(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _small_frame().assign(pressure=None).to_csv(path, index=False)
    result = cli("train", "--data", str(path), "--target", "y")
    assert_one_line_error(result, INPUT, "column 'pressure' is entirely missing", "--ignore pressure")


def test_unknown_family_and_bad_name(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _small_frame().to_csv(path, index=False)
    result = cli("train", "--data", str(path), "--target", "y", "--model", "svm")
    assert_one_line_error(result, INPUT, "unknown model family 'svm'", "logreg, rf, gb")
    result = cli("train", "--data", str(path), "--target", "y", "--name", "team/model@1")
    assert_one_line_error(result, INPUT, "model name 'team/model@1'")


# --- edgeloop convert: registry and gates --------------------------------------------------------------


def _convert(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path, reference: str, *extra: str) -> CliResult:
    out = tmp_path / "bundles" / "out"
    args = ["convert", reference, "--out", str(out), "--tracking-uri", rf_bundle.tracking_uri]
    result = cli(*args, "--keys-dir", str(rf_bundle.keys_dir), *extra)
    assert not out.exists(), "a failed conversion left a bundle directory"
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == [], leftovers
    return result


def test_unknown_registry_name(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    result = _convert(cli, rf_bundle, tmp_path, "no-such-model@champion")
    assert_one_line_error(result, NOT_FOUND, "registered model 'no-such-model' not found", rf_bundle.name)


def test_unknown_alias(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    result = _convert(cli, rf_bundle, tmp_path, f"{rf_bundle.name}@production")
    assert_one_line_error(result, NOT_FOUND, f"model '{rf_bundle.name}' has no alias 'production'", "champion")


def test_unknown_version_and_malformed_reference(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    assert_one_line_error(_convert(cli, rf_bundle, tmp_path, f"{rf_bundle.name}/999"), NOT_FOUND, "no version 999")
    result = _convert(cli, rf_bundle, tmp_path, "just-a-name")
    assert_one_line_error(result, INPUT, "is not a model reference", "NAME@ALIAS")
    result = _convert(cli, rf_bundle, tmp_path, f"runs:/{'0' * 32}/model")
    assert_one_line_error(result, NOT_FOUND, "run 000")


def test_parity_gate_failure_leaves_no_bundle(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    result = _convert(cli, rf_bundle, tmp_path, f"{rf_bundle.name}/1", "--tolerance", "0")
    assert_one_line_error(result, CONVERSION, "parity gate failed", "label mismatches", "tolerance 0e+00")


def _holdout(rf_bundle: TrainedBundle, name: str) -> float:
    from mlflow.tracking import MlflowClient

    return float(MlflowClient(rf_bundle.tracking_uri).get_run(rf_bundle.run_id).data.metrics[f"holdout_{name}"])


def test_metric_gate_failure_leaves_no_bundle(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    """--min-metric: a model below a floor is not converted (exit 5, one line naming the metric and values)."""
    auc = _holdout(rf_bundle, "roc_auc")
    floor = round(auc + 0.001, 4)
    result = _convert(cli, rf_bundle, tmp_path, f"{rf_bundle.name}/1", "--min-metric", f"roc_auc={floor}")
    assert_one_line_error(result, CONVERSION, "metric gate failed", f"roc_auc {auc:.4f} < {floor:g}", "no bundle")
    # Several floors: every miss is named, a metric the run lacks too; the metrics it passes are not.
    args = ["--min-metric", "accuracy=0", "--min-metric", "f1=1.01", "--min-metric", "auc=0.5"]
    result = _convert(cli, rf_bundle, tmp_path, f"{rf_bundle.name}/1", *args)
    assert_one_line_error(result, CONVERSION, "f1 ", "< 1.01", "auc is not a held-out metric", "roc_auc")
    assert "accuracy" not in result.errors[0].split("(it has")[0]


@pytest.mark.parametrize("spec", ["roc_auc", "roc_auc=", "=0.8", "roc_auc=high", "roc_auc=nan"])
def test_metric_gate_malformed_floor(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path, spec: str) -> None:
    result = _convert(cli, rf_bundle, tmp_path, f"{rf_bundle.name}/1", "--min-metric", spec)
    assert_one_line_error(result, INPUT, f"--min-metric {spec!r}", "NAME=NUMBER")


def test_metric_gate_met_converts(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    floor = round(_holdout(rf_bundle, "roc_auc") - 0.001, 4)
    out = tmp_path / "met"
    args = ["convert", f"{rf_bundle.name}/1", "--out", str(out), "--tracking-uri", rf_bundle.tracking_uri]
    result = cli(*args, "--keys-dir", str(rf_bundle.keys_dir), "--min-metric", f"roc_auc={floor}")
    assert result.exit_code == 0, result.stderr
    assert (out / MANIFEST_FILE).is_file() and (out / SIGNATURE_FILE).is_file()


def test_require_key_refuses_a_missing_signing_key(
    cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--require-key (or EDGELOOP_REQUIRE_KEY, or [convert] require_key in the config file): no key file is one
    line and exit 3, before the registry is read, and no key pair is generated (CI must not sign with one)."""
    empty = tmp_path / "no-keys"
    reference = f"{rf_bundle.name}/1"
    base = ["--tracking-uri", rf_bundle.tracking_uri, "--keys-dir", str(empty)]
    # With the flag.
    result = _convert(cli, rf_bundle, tmp_path, reference, "--keys-dir", str(empty), "--require-key")
    assert_one_line_error(result, NOT_FOUND, f"signing key {empty / 'edgeloop-signing.key'} not found", "require_key")
    assert not empty.exists()
    # From the environment.
    monkeypatch.setenv("EDGELOOP_REQUIRE_KEY", "true")
    result = cli("convert", reference, "--out", str(tmp_path / "env-out"), *base)
    assert_one_line_error(result, NOT_FOUND, "require_key")
    monkeypatch.delenv("EDGELOOP_REQUIRE_KEY")
    # From the config file's [convert] table.
    config = tmp_path / "edgeloop.toml"
    config.write_text("[convert]\nrequire_key = true\n")
    monkeypatch.setenv("EDGELOOP_CONFIG", str(config))
    result = cli("convert", reference, "--out", str(tmp_path / "file-out"), *base)
    assert_one_line_error(result, NOT_FOUND, "require_key")
    assert not empty.exists() and not (tmp_path / "env-out").exists() and not (tmp_path / "file-out").exists()
    # With the key in place, --require-key signs with that key.
    out = tmp_path / "signed"
    result = cli(
        "convert",
        reference,
        "--out",
        str(out),
        "--tracking-uri",
        rf_bundle.tracking_uri,
        "--keys-dir",
        str(rf_bundle.keys_dir),
        "--require-key",
    )
    assert result.exit_code == 0, result.stderr
    assert load_bundle(out, load_public_key(rf_bundle.public_key)).signed


def test_without_require_key_a_missing_key_pair_is_generated(
    cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """The default (a laptop's first convert): the pair is generated in keys_dir and the bundle is signed with it."""
    keys = tmp_path / "fresh-keys"
    out = tmp_path / "fresh"
    result = cli(
        "convert",
        f"{rf_bundle.name}/1",
        "--out",
        str(out),
        "--tracking-uri",
        rf_bundle.tracking_uri,
        "--keys-dir",
        str(keys),
    )
    assert result.exit_code == 0, result.stderr
    assert load_bundle(out, load_public_key(keys / "edgeloop-signing.pub")).signed


def test_out_that_is_a_project_directory(cli: Cli, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "keep.txt").write_text("x")
    args = ["convert", f"{rf_bundle.name}/1", "--out", str(project), "--tracking-uri", rf_bundle.tracking_uri]
    assert_one_line_error(cli(*args), INPUT, "is not a bundle; refusing to replace it")
    assert (project / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("command", ["train", "convert"])
def test_unreachable_tracking_server_fails_fast(cli: Cli, tmp_path: Path, command: str) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens there
    if command == "train":
        data = tmp_path / "data.csv"
        _small_frame().to_csv(data, index=False)
        result = cli("train", "--data", str(data), "--target", "y", "--tracking-uri", uri)
    else:
        result = cli("convert", "m@champion", "--out", str(tmp_path / "b"), "--tracking-uri", uri)
        assert not (tmp_path / "b").exists()
    assert_one_line_error(result, UNAVAILABLE, f"tracking server {uri} is unreachable")
    assert result.seconds < 10


def test_a_tracking_password_never_reaches_the_screen(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://ml:s3cr3t-pw@127.0.0.1:{port}"
    result = cli("convert", "m@champion", "--out", str(tmp_path / "b"), "--tracking-uri", uri)
    line = assert_one_line_error(result, UNAVAILABLE, f"tracking server http://ml:***@127.0.0.1:{port} is unreachable")
    assert "s3cr3t-pw" not in result.stderr + result.stdout, line


def test_plain_file_store_is_refused(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    _small_frame().to_csv(data, index=False)
    result = cli("train", "--data", str(data), "--target", "y", "--tracking-uri", str(tmp_path / "mlruns"))
    assert_one_line_error(result, INPUT, "use sqlite:///")


# --- edgeloop predict: tampered bundles ----------------------------------------------------------------


@pytest.fixture()
def bundle_copy(rf_bundle: TrainedBundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(rf_bundle.bundle, tmp_path / "bundle"))


def _predict(cli: Cli, bundle: Path, rf_bundle: TrainedBundle, key: Path | None = None) -> CliResult:
    key = key or rf_bundle.public_key
    return cli("predict", "--bundle", str(bundle), "--data", str(rf_bundle.data), "--public-key", str(key))


def test_predict_with_an_intact_bundle(cli: Cli, bundle_copy: Path, rf_bundle: TrainedBundle) -> None:
    result = _predict(cli, bundle_copy, rf_bundle)
    assert result.exit_code == 0, result.stderr
    assert "p(1)" in result.stdout and result.errors == []


def test_predict_refuses_a_model_with_another_sha256(cli: Cli, bundle_copy: Path, rf_bundle: TrainedBundle) -> None:
    model = bundle_copy / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    assert_one_line_error(_predict(cli, bundle_copy, rf_bundle), INTEGRITY, "sha256", "does not match the manifest")


def test_predict_refuses_an_altered_manifest(cli: Cli, bundle_copy: Path, rf_bundle: TrainedBundle) -> None:
    path = bundle_copy / MANIFEST_FILE
    document = orjson.loads(path.read_bytes())
    document["classes"] = list(reversed(document["classes"]))
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    assert_one_line_error(_predict(cli, bundle_copy, rf_bundle), INTEGRITY, "signature is invalid", "altered")


def test_predict_refuses_a_signature_by_another_key(
    cli: Cli, bundle_copy: Path, rf_bundle: TrainedBundle, tmp_path: Path
) -> None:
    result = cli("keys", "generate", "--out", str(tmp_path / "other-keys"))
    assert result.exit_code == 0, result.stderr
    other = tmp_path / "other-keys" / "edgeloop-signing.pub"
    assert_one_line_error(_predict(cli, bundle_copy, rf_bundle, other), INTEGRITY, "another key")


def test_predict_refuses_an_unsigned_or_garbled_bundle(cli: Cli, bundle_copy: Path, rf_bundle: TrainedBundle) -> None:
    (bundle_copy / SIGNATURE_FILE).write_text("{")
    assert_one_line_error(_predict(cli, bundle_copy, rf_bundle), INTEGRITY, "malformed")
    (bundle_copy / SIGNATURE_FILE).unlink()
    assert_one_line_error(_predict(cli, bundle_copy, rf_bundle), INTEGRITY, "unsigned")


def test_predict_missing_bundle_key_or_data(
    cli: Cli, bundle_copy: Path, rf_bundle: TrainedBundle, tmp_path: Path
) -> None:
    assert_one_line_error(_predict(cli, tmp_path / "nowhere", rf_bundle), NOT_FOUND, "bundle directory")
    assert_one_line_error(_predict(cli, bundle_copy, rf_bundle, tmp_path / "no.pub"), NOT_FOUND, "public key")
    result = cli("predict", "--bundle", str(bundle_copy), "--data", str(tmp_path / "none.csv"))
    assert_one_line_error(result, NOT_FOUND, "data file")
    parquet = tmp_path / "rows.parquet"
    pd.read_csv(rf_bundle.data).to_parquet(parquet)
    result = cli("predict", "--bundle", str(bundle_copy), "--data", str(parquet))
    assert_one_line_error(result, INPUT, "not a readable UTF-8 CSV file")


# --- the real binary ------------------------------------------------------------------------------------


def test_subprocess_train_errors_have_no_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(os.urandom(4096))
    for args, code, fragment in [
        (["train", "--data", str(tmp_path / "missing.csv"), "--target", "y"], NOT_FOUND, "not found"),
        (["train", "--data", str(garbage), "--target", "y"], INPUT, "not a readable Parquet file"),
    ]:
        result = run_edgeloop_subprocess(args, tmp_path / "home", tmp_path)
        assert_one_line_error(result, code, fragment)
        assert result.stderr.strip().startswith("error:"), result.stderr


def test_subprocess_unreachable_server_and_tampered_bundle(rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "bundles" / "b"
    result = run_edgeloop_subprocess(
        ["convert", f"{rf_bundle.name}@champion", "--out", str(out), "--tracking-uri", uri], tmp_path / "home", tmp_path
    )
    assert_one_line_error(result, UNAVAILABLE, "unreachable")
    assert result.seconds < 15 and not out.exists()

    bundle = Path(shutil.copytree(rf_bundle.bundle, tmp_path / "tampered"))
    with (bundle / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")
    args = [
        "predict",
        "--bundle",
        str(bundle),
        "--data",
        str(rf_bundle.data),
        "--public-key",
        str(rf_bundle.public_key),
    ]
    result = run_edgeloop_subprocess(args, tmp_path / "home", tmp_path)
    assert_one_line_error(result, INTEGRITY, "the model was altered")
    assert result.stdout == ""
