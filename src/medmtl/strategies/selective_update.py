"""``sel_update``: selective task-group updates (Jeong & Yoon 2025, "Selective Task Group Updates for
Multi-Task Optimization", ICLR), as the authors' public code computes them.

The tasks are split into groups, and each mini-batch updates the network once per group, in a
shuffled order, with one shared optimizer::

    groups: each task alone for iterations 0 .. ``warmup_iterations``, afterwards the
            clusters of Affinity Propagation on the proximal inter-task affinity A (below);
            one group only -> it is updated twice
    for g in shuffled(groups):
        L_t   <- every task's loss at the current weights (one forward)
        one step of the optimizer on  sum_{k in g} L_k   (/ |g| with ``group_mean``)
        update A from L and L_prev (the previous forward of this mini-batch); L_prev <- L

The affinity update (their ``form_task_affinity.update``), with r_t = (1 - L_t / L_prev_t) / |g|,
the relative loss decrease of task t between the two forwards, and an exponential moving average
EMA(x) = (1 - beta) A[s, t] + beta x (beta = ``affinity_decay``), for every s in the credited
group g and every task t::

    t = s:            A[s, s] <- EMA(r_s)             only when r_s >= 0
    t in g, t != s:   A[s, t] <- EMA(r_t)             when r_t r_s >= 0
                      A[s, t] <- EMA(-max(r_t, r_s))  otherwise
    t not in g:       A[s, t] <- EMA(r_t)

The first forward of a mini-batch has no L_prev and updates nothing.

Grouping (their ``next_group``): X[:, i] = A[:, i] / A[i, i], S = (X + X^T) / 2, scikit-learn's
``AffinityPropagation(affinity="precomputed", preference, convergence_iter=50)`` on S; when it
finds no cluster, again with ``convergence_iter`` 100 higher, up to 10 times, and the groups stay
as they were if none is found. Two choices of ours, stated: the propagation's ``random_state`` is
fixed (0), where their call leaves it to NumPy's global generator, so every rank and a resumed run
form the same groups; and a task whose self-affinity A[i, i] is still 0 (its loss never fell
under its own group's updates, so X is undefined) keeps the groups as they were.

**Which step the loss change is credited to** (``credit``). L is measured before g's step, and
L_prev before the previous group's step, so in their code r measures the effect of the *previous*
group's step and credits it to g (``credit: authors_code``, the default: the code that produced
the published numbers). ``credit: own_step`` credits the change to the group whose step caused it
(the previous group), which is what an affinity "of group g's update on task t" reads as. The
paper's text could not be consulted offline; docs/methods.md records this choice.

Partial labels: a task without labelled samples in the batch has no loss: it updates no affinity
and a group with no present task takes no step. Under DDP the losses are the union's, the order is
rank 0's draw, and the clustering is deterministic, so every rank takes the same steps. State (A,
the groups, the iteration count) is held in buffers, so a checkpoint restores it; the order is
drawn from torch's global generator, which checkpoints also hold. Cost: (number of groups) forwards,
backwards and optimizer steps per mini-batch (T during warm-up), plus one Affinity Propagation on a
T x T matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, Strategy

CREDITS = ("authors_code", "own_step")


def affinity_propagation_groups(
    affinity: np.ndarray, preference: float | None = None, convergence_iter: int = 50, random_state: int = 0
) -> list[int] | None:
    """Group labels (0, 1, ... per task) from the affinity map, as their ``next_group``; None when
    the map cannot be normalised (a zero self-affinity) or no cluster is found in 10 tries."""
    try:
        from sklearn.cluster import AffinityPropagation
        from sklearn.exceptions import ConvergenceWarning
    except ImportError as missing:
        raise ConfigError("optim=sel_update groups the tasks with scikit-learn: pip install scikit-learn.") from missing

    diagonal = np.diag(affinity)
    if not np.all(diagonal > 0):
        return None
    x = affinity / diagonal[np.newaxis, :]  # column i divided by A[i, i]
    similarity = (x + x.T) / 2
    for attempt in range(10):
        propagation = AffinityPropagation(
            affinity="precomputed",
            preference=preference,
            convergence_iter=convergence_iter + 100 * attempt,
            random_state=random_state,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # "did not converge": handled below, as theirs
            labels = propagation.fit_predict(similarity)
        if len(propagation.cluster_centers_indices_) > 0:
            return [int(label) for label in labels]
    return None


class SelectiveGroupUpdates(Strategy):
    """Args:
    affinity_decay: beta of the affinity map's moving average (their ``affin_decay``, 0.001).
    warmup_iterations: grouping starts after this many iterations with each task its own group,
        plus one (their ``prepos``, 100: iterations 0-100 keep the first groups).
    preference: Affinity Propagation's preference (None: the median similarity, their setting).
    group_mean: divide a group's summed loss by its size (their ``group_norm``, off in their configs).
    credit: ``authors_code`` or ``own_step`` (see the module docstring).
    """

    supports_fp16_scaler = False  # several optimizer steps per mini-batch
    affinity: torch.Tensor
    group_of: torch.Tensor
    iterations: torch.Tensor

    def __init__(
        self,
        affinity_decay: float = 0.001,
        warmup_iterations: int = 100,
        preference: float | None = None,
        group_mean: bool = False,
        credit: str = "authors_code",
    ):
        super().__init__()
        if not 0 < affinity_decay <= 1:
            raise ConfigError(f"optim.strategy.affinity_decay must be in (0, 1], got {affinity_decay!r}.")
        if credit not in CREDITS:
            raise ConfigError(f"optim.strategy.credit must be one of {CREDITS}, got {credit!r}.")
        self.affinity_decay, self.warmup_iterations = affinity_decay, warmup_iterations
        self.preference, self.group_mean, self.credit = preference, group_mean, credit

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        t = len(self.task_names)
        self.register_buffer("affinity", torch.zeros(t, t, dtype=torch.float64))
        self.register_buffer("group_of", torch.arange(t))  # each task alone to begin with
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))

    # --- the affinity map ---------------------------------------------------------------------
    def _ema(self, s: int, t: int, value: float) -> None:
        beta = self.affinity_decay
        self.affinity[s, t] = (1 - beta) * self.affinity[s, t] + beta * value

    def update_affinity(self, group: Sequence[int], losses: Mapping[int, float], previous: Mapping[int, float]) -> None:
        """One affinity update crediting ``group`` (task indices) with the change from ``previous``
        to ``losses`` (task index -> loss; absent tasks are missing)."""
        size = len(group)
        decrease = {t: (1 - losses[t] / previous[t]) / size for t in losses if t in previous and previous[t] > 0}
        for s in group:
            for t, r_t in decrease.items():
                if t not in group:
                    self._ema(s, t, r_t)
                    continue
                if s not in decrease:
                    continue
                r_s = decrease[s]
                if t == s:
                    if r_t >= 0:
                        self._ema(s, t, r_t)
                elif r_t * r_s >= 0:
                    self._ema(s, t, r_t)
                else:
                    self._ema(s, t, -max(r_t, r_s))

    def groups(self) -> list[list[int]]:
        """The current groups, as lists of task indices, in label order."""
        labels = self.group_of.tolist()
        return [[t for t, label in enumerate(labels) if label == g] for g in sorted(set(labels))]

    def regroup(self) -> None:
        labels = affinity_propagation_groups(self.affinity.cpu().numpy(), self.preference)
        if labels is not None:
            self.group_of.copy_(torch.tensor(labels))

    # --- one iteration -----------------------------------------------------------------------
    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        (optimizer,) = ctx.optimizers()
        if int(self.iterations) > self.warmup_iterations:  # their iterations 0 .. prepos keep the first groups
            self.regroup()
        self.iterations += 1
        groups = self.groups()
        order = ctx.agree(torch.randperm(len(groups)).to(self.group_of.device)).tolist()
        schedule = [groups[i] for i in order]
        if len(schedule) == 1:
            schedule = schedule * 2
        previous: dict[int, float] | None = None
        previous_group: list[int] | None = None
        logged: dict[str, torch.Tensor] = {}
        for group in schedule:
            losses = ctx.losses(ctx.forward(batch), batch)
            values = {self.task_names.index(name): float(loss.detach()) for name, loss in losses.items()}
            if previous is not None:
                credited = group if self.credit == "authors_code" else previous_group
                assert credited is not None
                self.update_affinity(credited, values, previous)
            previous, previous_group = values, group
            present = [losses[self.task_names[t]] for t in group if self.task_names[t] in losses]
            if not present:
                continue  # no labelled sample of this group's tasks in the batch
            total = torch.stack(present).sum()
            if self.group_mean:
                total = total / len(group)
            ctx.model.zero_grad(set_to_none=True)
            ctx.backward(total)
            ctx.clip_gradients(optimizer)
            optimizer.step()
            if not logged:  # the losses at the iteration's starting weights
                logged = self.detached(losses)
        logged["groups"] = torch.tensor(float(len(groups)))
        return logged
