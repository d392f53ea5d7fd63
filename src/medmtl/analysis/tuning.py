"""Summary of tuning sweeps (``experiment=tune``): how each method was tuned and what was chosen.

A tuning sweep folder holds ``tuning.yaml`` (written before the first trial: method, objective,
budget, sampler, search space), Optuna's ``optimization_results.yaml`` (the best values) and one
folder per trial whose ``metrics.json`` carries the trial's overrides and its validation metrics.
:func:`summarise` reads them back; :func:`write_tuning_report` writes ``tuning.md`` with one row
per method (budget, completed and failed trials, best objective, chosen values), the search
spaces, and the overrides that run a method's CV or seed table at its tuned setting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf


@dataclass
class TuningSummary:
    folder: Path
    method: str
    objective: dict[str, str]
    n_trials: int
    search_space: dict[str, str]
    best_params: dict[str, object]
    best_value: float | None
    trials: list[dict[str, object]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for t in self.trials if t["value"] is None)

    def overrides(self) -> str:
        """The command-line overrides that train this method at its tuned setting."""
        values = [f"{k}={_plain(v)}" for k, v in self.best_params.items()]
        return " ".join([f"optim={self.method}", *values])


def _plain(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _trial_value(trial: Path, metric: str, split: str) -> float | None:
    path = trial / "metrics.json"
    if not path.is_file() or (trial / "failure.json").is_file():
        return None
    value = (json.loads(path.read_text()).get(split) or {}).get(metric)
    return None if value is None else float(value)


def summarise(folder: str | Path) -> TuningSummary:
    """Read one tuning sweep folder back (FileNotFoundError names what is missing)."""
    folder = Path(folder)
    setup_path = folder / "tuning.yaml"
    if not setup_path.is_file():
        raise FileNotFoundError(f"{folder} holds no tuning.yaml: is it a sweep of experiment=tune?")
    setup = OmegaConf.to_container(OmegaConf.load(setup_path))
    assert isinstance(setup, dict)
    objective = {str(k): str(v) for k, v in setup["objective"].items()}
    results_path = folder / "optimization_results.yaml"
    results = OmegaConf.to_container(OmegaConf.load(results_path)) if results_path.is_file() else {}
    assert isinstance(results, dict)
    trials: list[dict[str, object]] = []
    for trial in sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = (
            json.loads((trial / "metrics.json").read_text()).get("overrides", []) if (trial / "metrics.json").is_file() else []
        )
        trials.append(
            {
                "trial": int(trial.name),
                "value": _trial_value(trial, objective["metric"], objective["split"]),
                "params": {
                    o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in setup["search_space"]
                },
            }
        )
    return TuningSummary(
        folder=folder,
        method=str(setup["method"]),
        objective=objective,
        n_trials=int(setup["n_trials"]),
        search_space={str(k): str(v) for k, v in setup["search_space"].items()},
        best_params=dict(results.get("best_params") or {}),
        best_value=None if results.get("best_value") is None else float(results["best_value"]),
        trials=trials,
    )


def write_tuning_report(folders: Sequence[str | Path], output: str | Path) -> Path:
    """``tuning.md`` for the given tuning sweeps (one per method); returns its path."""
    summaries = [summarise(f) for f in folders]
    lines = [
        "# Tuning",
        "",
        "| method | objective | budget (trials) | completed | failed | best | chosen values |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        objective = f"{s.objective['direction']} {s.objective['split']} {s.objective['metric']}"
        chosen = ", ".join(f"{k.split('.')[-1]} = {_plain(v)}" for k, v in s.best_params.items())
        best = "" if s.best_value is None else f"{s.best_value:.4g}"
        lines.append(f"| {s.method} | {objective} | {s.n_trials} | {len(s.trials) - s.failed} | {s.failed} | {best} | {chosen} |")
    lines += ["", "## Search spaces", ""]
    for s in summaries:
        lines.append(f"- {s.method}: " + "; ".join(f"`{k}`: {v}" for k, v in s.search_space.items()))
    lines += ["", "## Run the tables at the tuned settings", ""]
    lines += [f"- `{s.overrides()}`" for s in summaries]
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
