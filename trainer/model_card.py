"""The model card logged with every trained version (markdown): intended use, data, metrics, what drives the
model (global permutation importance on held-out rows, per input feature), limitations."""

from __future__ import annotations

from contracts.manifest import GlobalImportance
from trainer.data import TrainingData

__all__ = ["importance_table", "render_model_card"]


def importance_table(importance: GlobalImportance) -> str:
    """The permutation importance as a Markdown section: one row per input feature, most important first."""
    rows = "\n".join(
        f"| {rank} | `{item.feature}` | {item.mean:.4f} | {item.std:.4f} |"
        for rank, item in enumerate(importance.features, start=1)
    )
    return f"""## What drives the model (permutation importance, held-out rows)
Drop of held-out `{importance.metric}` (baseline {importance.baseline:.4f}) when one input feature's values are
shuffled, over {importance.n_repeats} repeats on {importance.rows} held-out rows (random_state
{importance.random_state}); each original input feature is shuffled as a whole, one-hot columns included. A value
near 0 means the model barely uses the feature; a negative value is noise. It says what the model relies on, not
what causes the target.

| rank | feature | mean drop | std |
|---|---|---|---|
{rows}
"""


def render_model_card(
    name: str,
    kind: str,
    data: TrainingData,
    metrics: dict[str, float],
    classes: list,
    code_version: str,
    run_id: str,
    importance: GlobalImportance | None = None,
) -> str:
    rows = "\n".join(f"| {key} | {value:.4f} |" for key, value in metrics.items())
    shares = data.target.value_counts(normalize=True)
    balance = ", ".join(f"{cls}: {share:.1%}" for cls, share in shares.items())
    missing = data.features.isna().mean() + (data.features == "").mean()
    gaps = ", ".join(f"{col} {rate:.1%}" for col, rate in missing.items() if rate > 0) or "none"
    drivers = f"\n{importance_table(importance)}" if importance is not None else ""
    return f"""# Model card: {name}

## Intended use
Predict `{data.target.name}` ({", ".join(map(str, classes))}) from {len(data.features.columns)} features,
on devices through edgeloop's edge agent and in central batch scoring. Not for decisions about people.

## Model
Estimator family `{kind}` in a scikit-learn pipeline (median imputation and scaling of numeric features,
constant imputation and one-hot encoding of categorical features; unknown categories are ignored).
Run `{run_id}`, code `{code_version}`.

## Data
Source `{data.source}` (sha256 `{data.sha256[:16]}`), {len(data.features)} rows
({data.dropped_rows} dropped for a missing target). Class balance: {balance}.
Numeric: {", ".join(data.numeric) or "none"}. Categorical: {", ".join(data.categorical) or "none"}.
Missing values: {gaps}.

## Held-out metrics (stratified split, rows never used for fitting)
| metric | value |
|---|---|
{rows}
{drivers}
## Limitations
- Trained on one snapshot of data; watch the drift scores (PSI per feature) reported by the fleet.
- Categories not seen in training contribute nothing to the prediction and are counted as unseen.
- Probabilities are not calibrated beyond what the estimator provides.
- Per-prediction explanations (the agent's POST /v1/explain) exist for logistic regression only; for tree
  ensembles the permutation importance above is the explanation offered.
"""
