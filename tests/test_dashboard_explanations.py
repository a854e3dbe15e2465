"""Governance on the dashboard's models page in headless Chromium (Debian's /usr/bin/chromium, Playwright).

The real cloud service (tests/test_dashboard.py's `running_cloud`) stores two real bundles of machine-failure:
v1 a random forest (permutation importance in its signed manifest, no explainer) and v2 a logistic regression
(importance and a linear explainer block). The API route GET /v1/bundles/{name}/{version}/explanations (viewer)
must return the manifests' blocks, and the page must show, per version, every feature's mean drop +- std of the
held-out metric with the manifest's numbers, in the manifest's order, a bar scaled to the largest |mean|, and the
per-prediction explanation line (v2: POST /v1/explain on the device; v1: the tree-ensemble limit), with no
console or page error and nothing fetched from outside the cloud.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.manifest import Manifest
from tests.conftest import Broker, TrainedBundle
from tests.test_dashboard import CHROMIUM, SCREENSHOTS, RunningCloud, dashboard_page, running_cloud

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
)
VIEWER = {"Authorization": "Bearer look"}


@pytest.fixture()
def cloud(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> Iterator[RunningCloud]:
    with running_cloud(broker, tmp_path, rf_bundle, logreg_bundle_v2) as running:
        yield running


def _api_checks(cloud: RunningCloud) -> None:
    """The route returns the signed manifest's blocks as they are; viewer role; unknown versions are a 404."""
    for manifest in (cloud.v1, cloud.v2):
        url = f"{cloud.url}/v1/bundles/{manifest.name}/{manifest.version}/explanations"
        assert httpx.get(url, timeout=10).status_code == 401
        response = httpx.get(url, headers=VIEWER, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert manifest.importance is not None
        assert body["importance"] == manifest.importance.model_dump(mode="json")
        assert body["per_prediction"]["available"] is (manifest.explainer is not None)
    missing = httpx.get(f"{cloud.url}/v1/bundles/{cloud.v1.name}/99/explanations", headers=VIEWER, timeout=10)
    assert missing.status_code == 404 and "99" in missing.json()["detail"]


def _shown(panel: Any) -> dict[str, Any]:
    """What one version's panel shows: the table rows (cells, data attributes, bar width) and the explanation line."""
    rows = panel.locator("table.importance tbody tr")
    shown = []
    for i in range(rows.count()):
        row = rows.nth(i)
        shown.append(
            {
                "cells": [cell.strip() for cell in row.locator("td").all_inner_texts()],
                "mean": float(row.get_attribute("data-mean") or "nan"),
                "std": float(row.get_attribute("data-std") or "nan"),
                "bar": float(row.locator(".bar").evaluate("e => parseFloat(e.style.width)")),
            }
        )
    line = panel.locator(".explain-line")
    return {
        "header": panel.locator("table.importance thead").inner_text(),
        "note": panel.locator(".importance-note").inner_text(),
        "rows": shown,
        "available": line.get_attribute("data-available"),
        "line": " ".join(line.inner_text().split()),
    }


def _expected_rows(manifest: Manifest) -> list[dict[str, Any]]:
    assert manifest.importance is not None
    features = manifest.importance.features
    top = max(abs(f.mean) for f in features) or 1.0
    return [
        {
            "cells": [str(rank), f.feature, f"{f.mean:.4f} ± {f.std:.4f}", ""],
            "mean": f.mean,
            "std": f.std,
            "bar": round(100 * abs(f.mean) / top, 1),
        }
        for rank, f in enumerate(features, start=1)
    ]


def test_models_page_shows_importance_and_explanation_availability_per_version(cloud: RunningCloud) -> None:
    rf, logreg = cloud.v1, cloud.v2
    assert rf.importance is not None and rf.explainer is None  # what the fixtures must provide
    assert logreg.importance is not None and logreg.explainer is not None
    assert {f.feature for f in rf.importance.features} == set(rf.feature_names)
    _api_checks(cloud)

    with dashboard_page(cloud) as (page, problems, external):
        page.goto(cloud.url + "/dashboard")
        page.wait_for_selector("text=Token needed")
        page.fill("#token", "look")
        page.click("#token-form button")
        page.click("a[data-nav='models']")
        grid = page.locator("#explain-0")
        for version in (1, 2):
            grid.locator(f".explanations[data-version='{version}'] table.importance tbody tr").first.wait_for()
        shown = {version: _shown(grid.locator(f".explanations[data-version='{version}']")) for version in (1, 2)}
        grid.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / "models-explanations.png"), full_page=True)
        grid.screenshot(path=str(SCREENSHOTS / "explanations-panel.png"))
    assert not external, f"the page fetched from outside the cloud: {external}"
    assert not problems, "\n".join(problems)

    for version, manifest in ((1, rf), (2, logreg)):
        assert manifest.importance is not None
        got, metric = shown[version], manifest.importance.metric
        assert f"Drop of {metric} (mean ± std)".upper() in got["header"].upper()  # (CSS upper-cases headers)
        assert f"baseline {manifest.importance.baseline:.4f}" in got["note"]
        assert f"{manifest.importance.n_repeats} repeats on {manifest.importance.rows} rows" in got["note"]
        expected = _expected_rows(manifest)
        assert [row["cells"] for row in got["rows"]] == [row["cells"] for row in expected]
        assert [(row["mean"], row["std"]) for row in got["rows"]] == [(row["mean"], row["std"]) for row in expected]
        assert [row["bar"] for row in got["rows"]] == pytest.approx([row["bar"] for row in expected], abs=0.051)
    assert shown[2]["available"] == "true"
    assert "POST /v1/explain on the device" in shown[2]["line"] and "logistic" in shown[2]["line"]
    assert shown[1]["available"] == "false"
    assert "neither cheap nor exact for tree ensembles (rf)" in shown[1]["line"]
    assert "global permutation importance" in shown[1]["line"]


def test_explanations_of_bundles_without_the_blocks_say_why(rf_bundle: TrainedBundle) -> None:
    """Older bundles (no importance) and a logistic regression converted before explainers: the line says why."""
    from cloud_sync.loop.governance import explanations
    from cloud_sync.store.bundles import BundleRegistry

    manifest = BundleRegistry(rf_bundle.bundle.parent).get(rf_bundle.name, 1).manifest
    old_tree = explanations(manifest.model_copy(update={"importance": None}))
    assert old_tree.importance is None and not old_tree.per_prediction.available
    assert "tree ensembles (rf)" in old_tree.per_prediction.note
    lineage = manifest.lineage.model_copy(update={"estimator": "logreg"})
    old_linear = explanations(manifest.model_copy(update={"lineage": lineage, "explainer": None}))
    assert not old_linear.per_prediction.available and old_linear.per_prediction.route is None
    assert "converted before explanations existed" in old_linear.per_prediction.note
