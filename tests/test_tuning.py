"""Fair tuning (``experiment=tune``): every method has a search space made of real options, the
objective comes from the validation split only, and the report states budget, space and choice."""

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

from helpers import CONF, TINY, options, run
from medmtl.errors import ConfigError
from medmtl.run import objective


def sweeper_of(optim_name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["experiment=tune", f"optim={optim_name}"], return_hydra_config=True)


@pytest.mark.parametrize("optim_name", options("optim"))
def test_every_method_has_a_search_space_of_its_own_options(optim_name):
    from omegaconf import OmegaConf

    cfg = sweeper_of(optim_name)
    space = dict(cfg.hydra.sweeper.params)
    assert "optim.optimizer.lr" in space, "the learning rate is tuned for every method"
    for key in space:
        if key.startswith("+"):  # an entry the config does not hold yet (fixed weights per task)
            assert OmegaConf.select(cfg, key[1:]) is None
        else:
            assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", f"{key} is not an option of optim={optim_name}"
    assert cfg.test is False and cfg.optimized_split == "validation"
    from medmtl.config_checks import check_search_space

    check_search_space(space, cfg.hydra.sweeper.n_trials)  # every shipped space can be searched


@pytest.mark.parametrize(
    "space, n_trials, message",
    [
        ({"optim.optimizer.lr": "tag(log, interval(0.0, 1e-2))"}, 10, "log scale and must start above 0"),
        ({"optim.optimizer.lr": "tag(log, interval(-1e-3, 1e-2))"}, 10, "log scale and must start above 0"),
        ({"optim.strategy.options.c": "interval(0.9, 0.1)"}, 10, "low >= high"),
        ({"optim.strategy.options.c": "interval(0.5, 0.5)"}, 10, "low >= high"),
        ({"optim.strategy.options.c": "interval(a, 0.5)"}, 10, "are not numbers"),
        ({"optim.optimizer.lr": "tag(log, interval(1e-5, 1e-2))"}, 0, "n_trials must be a whole number of trials >= 1, got 0"),
        ({"optim.optimizer.lr": "tag(log, interval(1e-5, 1e-2))"}, -3, "got -3"),
    ],
)
def test_a_search_that_cannot_search_is_one_sentence(space, n_trials, message):
    from medmtl.config_checks import check_search_space

    with pytest.raises(ConfigError, match=message):
        check_search_space(space, n_trials)


def tiny_search(tmp_path, sweep, *overrides: str):
    """``experiment=tune`` of vanilla on the tiny quickstart, from the command line, into ``sweep``."""
    tiny = (o for o in TINY if not o.startswith("experiment="))
    arguments = ["-m", "experiment=tune", "optim=vanilla", "trainer=cpu", *tiny, *overrides, f"hydra.sweep.dir={sweep}"]
    return run("train.py", arguments, tmp_path)


def test_a_bad_search_ends_the_sweep_with_exit_2_before_any_trial(tmp_path):
    """From the command line: one sentence, exit 2, no trial folder (Hydra only warns about a
    callback's exception; the sweep must still stop)."""
    sweep = tmp_path / "tune"
    done = tiny_search(tmp_path, sweep, "optim.optimizer.lr=tag(log, interval(0, 0.01))")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "log scale and must start above 0" in done.stderr and "Traceback" not in done.stderr
    assert not list(sweep.glob("*/metrics.json"))


def test_a_search_none_of_whose_trials_completes_lists_them_and_exits_with_their_code(tmp_path):
    """Every trial refused (an image side the U-Net cannot take): after the last trial, one line per
    trial and exit 2, not Optuna's "No trials are completed yet" traceback."""
    sweep = tmp_path / "tune"
    done = tiny_search(tmp_path, sweep, "data.image_size=30", "hydra.sweeper.n_trials=2")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"every one of the 2 trials of {sweep} failed" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("configuration error: UNetVGG16 needs image sides divisible by 16") == 2


def test_the_tuning_objective_is_read_from_the_validation_metrics_only():
    record = {"test": {"loss": 0.1}, "validation": {"loss": 0.7}}
    assert objective(record, "loss", "validation") == pytest.approx(0.7)
    assert objective(record, "loss", "test") == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="not among the validation metrics"):
        objective(record, "auc", "validation")


@pytest.mark.slow
def test_a_tuning_sweep_records_its_budget_and_picks_the_best_validation_trial(tmp_path):
    """Two trials of CAGrad on the tiny synthetic REFUGE: no trial reads the test split, Optuna's
    best value is the lowest validation loss among the trials' own records, and the report names
    the budget, the space and the chosen values."""
    sweep = tmp_path / "tune" / "jd_cagrad"
    done = run(
        "train.py",
        [
            "-m",
            "experiment=tune",
            "optim=jd_cagrad",
            "trainer=cpu",
            *(o for o in TINY if not o.startswith("experiment=")),
            "trainer.max_epochs=2",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    setup = yaml.safe_load((sweep / "tuning.yaml").read_text())
    assert setup["n_trials"] == 3 and setup["objective"] == {"split": "validation", "metric": "loss", "direction": "minimize"}
    assert set(setup["search_space"]) == {"optim.optimizer.lr", "optim.strategy.options.c"}
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 3
    assert all(r["test"] == {} for r in records), "a tuning trial read the test split"
    losses = [r["validation"]["loss"] for r in records]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(losses))
    best_record = records[losses.index(min(losses))]
    chosen = {o.split("=")[0]: float(o.split("=")[1]) for o in best_record["overrides"] if o.startswith("optim.")}
    assert chosen == pytest.approx(best["best_params"])
    assert 0.1 <= best["best_params"]["optim.strategy.options.c"] <= 0.9

    report = run("tuning_report.py", [str(sweep), "--output", str(tmp_path / "tuning.md")], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "tuning.md").read_text()
    assert "| jd_cagrad | minimize validation loss | 3 | 3 | 0 |" in text
    assert "optim=jd_cagrad optim.optimizer.lr=" in text and "interval(0.1, 0.9)" in text


def test_the_tuning_report_refuses_a_folder_that_is_not_a_tuning_sweep(tmp_path):
    report = run("tuning_report.py", [str(tmp_path)], tmp_path)
    assert report.returncode == 2 and "no tuning.yaml" in report.stderr


@pytest.mark.parametrize(
    ("sweeper", "kinds", "exit_code"),
    [
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", ["non-finite values", None, None], None),
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", ["non-finite values", "crash", None], 1),
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", ["non-finite values"] * 3, 3),
        ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", ["non-finite values", None, None], 3),
    ],
)
def test_diverged_trials_end_a_tuning_sweep_normally_and_any_other_sweep_with_an_error(tmp_path, sweeper, kinds, exit_code):
    """A learning-rate search meets rates that diverge: with trials left to choose from, the search
    finished (exit 0, the diverged trials listed). A crash, a search where every trial diverged, or
    a diverged run of a table sweep still fail the sweep."""
    from omegaconf import OmegaConf

    from medmtl.entry import write_failure
    from medmtl.utils.hydra_callbacks import FolderGuard

    for index, kind in enumerate(kinds):
        job = tmp_path / str(index)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("[]\n")
        if kind is not None:
            write_failure(job, kind, "stopped", {"crash": 1, "non-finite values": 3}[kind])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {"_target_": sweeper}}})
    if exit_code is None:
        FolderGuard().on_multirun_end(config)
    else:
        with pytest.raises(SystemExit) as stopped:
            FolderGuard().on_multirun_end(config)
        assert stopped.value.code == exit_code
