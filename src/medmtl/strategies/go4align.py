"""``go4align``: GO4Align (Shen et al. 2024, NeurIPS), adaptive group risk minimisation, as the
authors' published code computes it.

Loss level, one backward of sum_k w_k L_k. Each iteration, from the present tasks' losses L
(detached):

1. risk-guided indicators: p_k <- p_k exp(-eta L_k), then p <- p / sum_j p_j (p_k = 1/T at the
   start; eta = ``robust_step_size``, 1e-4 in the authors' code), so p_k is proportional to
   exp(-eta sum_t L_k(t)) over the iterations so far (the sign is the code's: group DRO's
   exponentiated update, which this resembles, uses +eta);
2. scale s_k = (sum_j L_j) / L_k (the loss-scale equaliser) and gamma_k = s_k p_k;
3. dynamical group assignment: the T values gamma_k are clustered into K = ``num_groups`` groups by
   k-means (squared distance, one dimension); every task of a group gets the group's centre, the
   mean of its members' gamma: w_k = mean{gamma_j : j in group(k)}. K = 1 gives every task the mean
   of all gamma_k; K >= T gives w_k = gamma_k.

**Choices, stated.** The authors' code clusters with ``kmeans_pytorch`` (Lloyd's iterations from
randomly drawn initial centres), whose result depends on the draw; here the one-dimensional
k-means is solved exactly (its global minimum, by dynamic programming over the sorted values, which
any optimal 1-D clustering splits into contiguous runs), so the weights are a function of the
losses: the same on every rank under data parallelism, and the same after a resume. Where Lloyd's
iterations reach the optimum the two agree; the tests compare with scikit-learn's KMeans. The
number of groups is not published per benchmark: the authors' NYUv2 script defaults to 1 (then the
assignment does nothing and every task gets the mean of gamma); ours defaults to 2, the smallest K
at which the grouping acts (``num_groups: 1`` is the script's default).

Partial labels: a task absent from the batch keeps its indicator (only the present tasks'
p_k are multiplied before the renormalisation over all tasks), and the scale, gamma and groups are
formed over the present tasks. The indicators are a buffer, so a checkpoint restores them. Cost:
that of ``vanilla`` plus the clustering of T numbers on the host (one read of the T losses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.weighted_sum import WeightedSum


def kmeans_1d(values: Sequence[float], groups: int) -> list[int]:
    """The exact k-means partition of ``values`` into min(groups, n) groups: the group index of each
    value (groups numbered in increasing order of their values).

    Minimises sum_g sum_{i in g} (v_i - mean_g)^2. An optimal partition of points on a line is made
    of contiguous runs of the sorted values, so D[g][j] (the least cost of the first j sorted values
    in g runs) = min_i D[g-1][i] + cost(i, j), with cost(i, j) the within-run sum of squares of the
    sorted values i..j-1 from prefix sums; O(groups n^2)."""
    n = len(values)
    k = min(groups, n)
    order = sorted(range(n), key=lambda i: values[i])
    v = [float(values[i]) for i in order]
    prefix, prefix_sq = [0.0], [0.0]
    for x in v:
        prefix.append(prefix[-1] + x)
        prefix_sq.append(prefix_sq[-1] + x * x)

    def cost(i: int, j: int) -> float:
        total = prefix[j] - prefix[i]
        return max(prefix_sq[j] - prefix_sq[i] - total * total / (j - i), 0.0)

    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    start = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            for i in range(g - 1, j):
                candidate = best[g - 1][i] + cost(i, j)
                if candidate < best[g][j]:
                    best[g][j], start[g][j] = candidate, i
    labels = [0] * n
    j = n
    for g in range(k, 0, -1):
        i = start[g][j]
        for position in range(i, j):
            labels[order[position]] = g - 1
        j = i
    return labels


class GroupAlignment(WeightedSum):
    probs: torch.Tensor

    def __init__(self, num_groups: int = 2, robust_step_size: float = 1.0e-4):
        super().__init__()
        if not (isinstance(num_groups, int) and num_groups >= 1):
            raise ConfigError(f"optim.strategy.num_groups must be an integer >= 1, got {num_groups!r}.")
        if not robust_step_size > 0:
            raise ConfigError(f"optim.strategy.robust_step_size must be a positive number, got {robust_step_size!r}.")
        self.num_groups = num_groups
        self.robust_step_size = robust_step_size
        self._last_weights: dict[str, torch.Tensor] = {}

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        t = len(self.task_names)
        self.register_buffer("probs", torch.full((t,), 1.0 / t, dtype=torch.float64))

    def present(self, losses) -> tuple[list[int], torch.Tensor]:
        """The present tasks' positions in the task set and their detached losses (float64)."""
        index = [self.task_names.index(name) for name in losses]
        return index, torch.stack([loss.detach().to(self.probs) for loss in losses.values()])

    def observe(self, ctx, batch, outputs, losses) -> None:
        """Step 1: the present tasks' indicators decay with their losses; all are renormalised."""
        index, values = self.present(losses)
        self.probs[index] *= torch.exp(-self.robust_step_size * values)
        self.probs /= self.probs.sum()

    def group_weights(self, losses) -> torch.Tensor:
        """Steps 2-3: w over the whole task set (0 for the absent tasks)."""
        index, values = self.present(losses)
        gamma = values.sum() / values * self.probs[index]
        labels = kmeans_1d(gamma.tolist(), self.num_groups)
        label_tensor = torch.tensor(labels, device=gamma.device)
        centres = torch.stack([gamma[label_tensor == g].mean() for g in range(max(labels) + 1)])
        weights = torch.zeros_like(self.probs)
        weights[index] = centres[label_tensor]
        return weights

    def weighted_total(self, losses):
        weights = self.group_weights(losses)
        self._last_weights = {name: weights[self.task_names.index(name)].float() for name in losses}
        return self.combine(weights, losses)

    def weights_to_log(self):
        return {f"weight/{name}": w for name, w in self._last_weights.items()}
