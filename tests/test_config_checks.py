"""Configuration values are checked before anything is built: every shipped configuration passes,
each rule refuses its bad value in one sentence naming the key, and the CLI ends such a run with exit
code 2 and a failure record."""

import json

import pytest

from helpers import compose_train, options, run
from medmtl.catalogue import needs_linear_readout
from medmtl.config_checks import check_config
from medmtl.errors import ConfigError


@pytest.mark.parametrize("group", ["experiment", "data", "optim", "model"])
def test_every_shipped_configuration_passes(group):
    """Each entry with the default others (a strategy that needs linear heads with such a network)."""
    for name in options(group):
        readout = group == "optim" and needs_linear_readout(name)
        check_config(
            compose_train(
                [f"{group}={name}", *(["model=multi_lenet", "model.head=linear", "data=multimnist"] if readout else [])]
            )
        )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
        ("data.eval_batch_size=-4", "data.eval_batch_size must be a positive integer, got -4"),
        ("+data.batch_size_3d=0", r"data.batch_size_3d must be a positive integer \(or null: data.batch_size\), got 0"),
        ("data.image_size=0", r"data.image_size must be a positive integer \(or a \[height, width\] pair\), got 0"),
        ("data.n_folds=1", r"data.n_folds must be an integer >= 2"),
        ("data.fold=5", r"data.fold must be in \[0, 4\], got 5"),
        ("data.num_workers=-1", "data.num_workers must be a whole number >= 0, got -1"),
        ("optim.optimizer.lr=fast", "optim.optimizer.lr must be a positive number, got 'fast'"),
        ("optim.optimizer.lr=0", "optim.optimizer.lr must be a positive number, got 0"),
        ("optim.optimizer.weight_decay=-0.1", "optim.optimizer.weight_decay must be a number >= 0"),
        ("model=mmoe model.num_experts=0", "model.num_experts must be an integer >= 1, got 0"),
        ("model=cgc model.task_experts=-1", "model.task_experts must be a whole number >= 0, got -1"),
        ("model=dselect_k model.num_nonzeros=0", "model.num_nonzeros must be an integer >= 1, got 0"),
        ("model=dselect_k model.gamma=-1", "model.gamma must be a positive number, got -1"),
        ("model=mmoe model.gate=top1", "model.gate must be softmax or dselect_k, got 'top1'"),
        ("model=mmoe model.gate_input_size=[0,16]", r"model.gate_input_size must be a \[height, width\] pair"),
        ("model=ltb model.eval_branching=mean", "model.eval_branching must be argmax or sample, got 'mean'"),
        ("model=ltb model.epochs=0", r"model.epochs must be an integer >= 1 \(the run's max_epochs\), got 0"),
        ("optim=dwa optim.strategy.temperature=-2", "optim.strategy.temperature must be a positive number, got -2"),
        ("optim=forum optim.strategy.inner_steps=0", "optim.strategy.inner_steps must be an integer >= 1, got 0"),
        ("optim=moml optim.strategy.inner_lr=0", "optim.strategy.inner_lr must be a positive number, got 0"),
        ("optim=ntkmtl optim.strategy.ntk_exp=0", "optim.strategy.ntk_exp must be a positive number, got 0"),
        ("optim=ntkmtl_sr optim.strategy.chunks=0", "optim.strategy.chunks must be an integer >= 1, got 0"),
        ("optim=ldc_mtl optim.strategy.lamb=-0.5", "optim.strategy.lamb must be a number >= 0, got -0.5"),
        ("optim=bayesagg_mtl optim.strategy.prior_variance=0", "optim.strategy.prior_variance must be a positive number, got 0"),
        ("optim=bayesagg_mtl optim.strategy.mc_samples=1", "optim.strategy.mc_samples must be an integer >= 2"),
        ("optim=bayesagg_mtl optim.strategy.variance_power=-1", "optim.strategy.variance_power must be a number >= 0"),
        ("optim=bayesagg_mtl optim.strategy.warmup_epochs=0", "optim.strategy.warmup_epochs must be an integer >= 1"),
        ("optim=bayesagg_mtl optim.strategy.head_clip=-2", "optim.strategy.head_clip must be a number >= 0"),
        ("model=multi_lenet model.head=conv", "model.head must be mlp or linear, got 'conv'"),
        ("data=emotic_synthetic data.dimensions_loss=l2", "data.dimensions_loss must be l1 or squared_error, got 'l2'"),
        (
            "optim=bayesagg_mtl optim.strategy.regression_variance_power=-1",
            "optim.strategy.regression_variance_power must be a number >= 0",
        ),
        ("optim=bayesagg_mtl", "optim=bayesagg_mtl needs every task's head to be one linear layer on a shared vector"),
        ("optim=bayesagg_mtl model=multi_lenet data=multimnist", r"model=multi_lenet model.head=linear \(got model MultiLeNet\)"),
        ("optim=ldc_mtl optim.strategy.weighting=softmax", "optim.strategy.weighting must be router or free, got 'softmax'"),
        (
            "optim=ldc_mtl optim.strategy.normalisation=ratio",
            "optim.strategy.normalisation must be initial_ratio, initial_log or none",
        ),
        ("optim=ldc_mtl optim.strategy.weight_sum=yes", "optim.strategy.weight_sum must be differentiable, detached or none"),
        ("optim=ldc_mtl optim.strategy.clamp=[0.9,0.1]", r"optim.strategy.clamp must be \[low, high\] with 0 <= low < high <= 1"),
        ("optim=go4align optim.strategy.num_groups=0", "optim.strategy.num_groups must be an integer >= 1, got 0"),
        ("optim=go4align optim.strategy.robust_step_size=-1e-4", "optim.strategy.robust_step_size must be a positive number"),
        (
            "optim=sel_update optim.strategy.affinity_decay=1.5",
            r"optim.strategy.affinity_decay must be a number in \(0, 1\], got 1.5",
        ),
        ("optim=sel_update optim.strategy.warmup_iterations=-1", "optim.strategy.warmup_iterations must be a whole number >= 0"),
        ("optim=sel_update optim.strategy.credit=next", "optim.strategy.credit must be authors_code or own_step, got 'next'"),
        ("test_weights=first", "test_weights must be best or last, got 'first'"),
        ("trainer.max_epochs=0", r"trainer.max_epochs must be a positive integer \(or -1: no epoch limit\), got 0"),
    ],
)
def test_each_rule_refuses_its_bad_value_in_one_sentence(override, message):
    with pytest.raises(ConfigError, match=message) as raised:
        check_config(compose_train(override.split()))
    assert "\n" not in str(raised.value)


def test_a_bad_value_ends_the_run_with_exit_2_and_a_failure_record(tmp_path):
    done = run("train.py", ["data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: data.batch_size must be a positive integer, got 0."
    failure = json.loads((tmp_path / "run" / "failure.json").read_text())
    assert failure["exit_code"] == 2 and "data.batch_size" in failure["message"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ckpt_path_last_in_a_fresh_folder_says_it_starts_from_scratch(tmp_path, caplog):
    import logging

    from medmtl.run import _resolve_ckpt_path

    with caplog.at_level(logging.WARNING, logger="medmtl.run"):
        assert _resolve_ckpt_path("last", tmp_path) is None
    assert "holds no checkpoints/last.ckpt, so this run starts from scratch" in caplog.text
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert _resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize(
    ("precision", "accelerator", "cuda", "refused"),
    [
        ("16-mixed", "cpu", True, True),
        ("16-mixed", "auto", False, True),
        ("16-mixed", "auto", True, False),
        ("16-mixed", "gpu", True, False),
        ("bf16-mixed", "cpu", False, False),
        ("32-true", "auto", False, False),
    ],
)
def test_16_mixed_on_a_cpu_is_refused_rather_than_run_as_bf16(precision, accelerator, cuda, refused):
    from medmtl.config_checks import check_precision_device

    if refused:
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            check_precision_device(precision, accelerator, cuda)
    else:
        check_precision_device(precision, accelerator, cuda)
