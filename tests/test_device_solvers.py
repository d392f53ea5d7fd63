"""The device-side T x T solvers against torchjd's host solvers, a hand computation, and the property
that makes them device-side: they run on meta tensors, where reading a value on the host fails."""

import pytest
import torch
import torchjd.aggregation as jd
from torchjd.linalg import QuadprogProjector

from medmtl.errors import ConfigError
from medmtl.strategies import JacobianAggregator
from medmtl.strategies.device_solvers import (
    MAX_TASKS,
    DeviceCAGradWeighting,
    DeviceDualConeProjector,
    DeviceIMTLGWeighting,
)


def gramians(seed: int = 0):
    """Random Gramians of 2..8 tasks: generic, with two nearly opposite gradients, rank-deficient."""
    generator = torch.Generator().manual_seed(seed)
    for size in (2, 3, 4, 5, 6, 8):
        for kind in ("generic", "conflicting", "rank_deficient"):
            jacobian = torch.randn(size, 40, generator=generator, dtype=torch.float64)
            if kind == "conflicting":
                jacobian[1] = -0.5 * jacobian[0] + 0.01 * torch.randn(40, generator=generator, dtype=torch.float64)
            if kind == "rank_deficient" and size > 2:
                jacobian[2] = jacobian[0] + jacobian[1]
            yield kind, jacobian @ jacobian.T


def test_dual_cone_projection_equals_quadprog_for_any_batch_of_targets():
    generator = torch.Generator().manual_seed(1)
    for _, gramian in gramians():
        size = gramian.shape[0]
        targets = torch.randn(2, 3, size, generator=generator, dtype=torch.float64)
        expected = QuadprogProjector()(targets, gramian)
        got = DeviceDualConeProjector()(targets, gramian)
        assert got.shape == targets.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["UPGradWeighting", "DualProjWeighting"])
def test_upgrad_and_dualproj_weights_equal_torchjds(name):
    for _, gramian in gramians(2):
        expected = getattr(jd, name)()(gramian)
        got = getattr(jd, name)(projector=DeviceDualConeProjector())(gramian)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_imtl_g_weights_equal_torchjds_and_vanish_with_the_gradients():
    for _, gramian in gramians(3):
        torch.testing.assert_close(DeviceIMTLGWeighting()(gramian), jd.IMTLGWeighting()(gramian), rtol=1e-9, atol=1e-12)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    assert torch.equal(DeviceIMTLGWeighting()(zero), torch.zeros(3, dtype=torch.float64))


def cagrad_objective(weights: torch.Tensor, gramian: torch.Tensor, c: float) -> float:
    """CAGrad's inner objective a^T w + phi ||g_w|| at the simplex point w behind CAGrad's weights
    1/T + (phi / ||g_w||) w (w is proportional to weights - 1/T)."""
    size = gramian.shape[0]
    normal = gramian / gramian.trace()
    point = weights - 1.0 / size
    point = point / point.sum()
    phi = c * normal.sum().sqrt() / size
    return float(normal.sum(1) @ point / size + phi * (point @ normal @ point).sqrt())


@pytest.mark.parametrize("c", [0.2, 0.5, 2.0])
def test_cagrad_reaches_at_least_torchjds_minimum_and_its_weights(c):
    """cvxpy's interior-point solution is within its tolerance of the minimiser: ours must never be
    worse on the objective, and the weights agree to that tolerance (amplified by phi / ||g_w||
    when the gradients nearly cancel)."""
    for kind, gramian in gramians(4):
        expected = jd.CAGradWeighting(c=c)(gramian)
        got = DeviceCAGradWeighting(c=c)(gramian)
        assert cagrad_objective(got, gramian, c) <= cagrad_objective(expected, gramian, c) + 1e-10, kind
        torch.testing.assert_close(got, expected, rtol=5e-3, atol=5e-3 * float(expected.abs().max()))


def test_cagrad_by_hand_on_two_orthogonal_gradients():
    """G = I: by symmetry w = (1/2, 1/2); with G / tr G = I / 2, phi = c ||g_0|| = c / 2 and
    ||g_w|| = 1 / 2, so the weights are 1/2 + (c/2) / (1/2) * 1/2 = (1 + c) / 2."""
    for c in (0.5, 1.0):
        got = DeviceCAGradWeighting(c=c)(torch.eye(2, dtype=torch.float64))
        torch.testing.assert_close(got, torch.full((2,), (1 + c) / 2, dtype=torch.float64))


def test_device_solvers_never_read_a_value_on_the_host():
    """On the meta device any .item(), Python branch on a tensor or numpy copy raises: the device
    solvers run there, torchjd's host solvers do not (so the check can fail)."""
    gramian = torch.empty(4, 4, device="meta")
    for weighting in (
        jd.UPGradWeighting(projector=DeviceDualConeProjector()),
        jd.DualProjWeighting(projector=DeviceDualConeProjector()),
        DeviceIMTLGWeighting(),
        DeviceCAGradWeighting(c=0.5),
    ):
        weights = weighting(gramian)
        assert weights.shape == (4,) and weights.device.type == "meta"
    for host in (jd.UPGradWeighting(), jd.IMTLGWeighting(), jd.CAGradWeighting(c=0.5)):
        with pytest.raises((RuntimeError, NotImplementedError)):
            host(gramian)


def test_strategy_solver_choice():
    def weights(solver: str, aggregator: str = "upgrad", tasks: int = 4):
        strategy = JacobianAggregator(aggregator, solver=solver)
        names = [f"t{k}" for k in range(tasks)]
        strategy.setup(names)
        jacobian = torch.randn(tasks, 30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        return strategy, strategy.combination_weights(jacobian @ jacobian.T, torch.ones(tasks), jacobian, names)

    for aggregator in ("upgrad", "dualproj", "imtl_g"):
        torch.testing.assert_close(weights("device", aggregator)[1], weights("host", aggregator)[1], rtol=0, atol=1e-9)
    strategy, _ = weights("auto")
    assert isinstance(strategy.weighting(strategy.task_names).projector, DeviceDualConeProjector)
    strategy, _ = weights("auto", tasks=MAX_TASKS + 1)  # 2^T faces too many: torchjd's solver
    assert not isinstance(strategy.weighting(strategy.task_names).projector, DeviceDualConeProjector)
    with pytest.raises(ConfigError, match="at most 10 tasks"):
        weights("device", tasks=MAX_TASKS + 1)
    with pytest.raises(ConfigError, match="solver=device exists for"):
        JacobianAggregator("nash_mtl", solver="device")
    with pytest.raises(ConfigError, match="must be one of"):
        JacobianAggregator("upgrad", solver="gpu")
    with pytest.raises(ConfigError, match="c > 0"):
        JacobianAggregator("cagrad", solver="device", options={"c": 0.0})
    mean = JacobianAggregator("cagrad", options={"c": 0.0})  # auto: the plain mean stays with torchjd
    mean.setup(["a", "b"])
    assert type(mean.weighting(["a", "b"])).__name__ == "CAGradWeighting"


@pytest.mark.parametrize("seed", range(5))
def test_imtl_g_on_a_rank_deficient_float32_gramian_keeps_the_float64_weights(seed):
    """Linearly dependent task gradients (g_4 = g_1 + g_2 / 2) give a singular Gramian; formed in
    float32 its zero eigenvalue becomes rounding noise (~1e-7 of the largest). The weights must stay
    those of the same gradients in float64 (torchjd's IMTL-G there), not an inverse of that noise."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([[1.0], [3.0], [0.1], [1.0]], dtype=torch.float64)
    jacobian = torch.randn(4, 2000, generator=generator, dtype=torch.float64) * scales
    jacobian[3] = jacobian[0] + 0.5 * jacobian[1]
    exact = jd.IMTLGWeighting()(jacobian @ jacobian.T)
    single = jacobian.float()
    ours = DeviceIMTLGWeighting()(single @ single.T).double()
    torch.testing.assert_close(ours, exact, rtol=0, atol=1e-4 * exact.abs().max().item())
