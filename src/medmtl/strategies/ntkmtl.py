"""``ntkmtl``: NTKMTL (Qin et al. 2025, NeurIPS), task balancing from the neural tangent kernel, in
the variant of its experiments (n = 1), as the authors' code computes it.

The NTK of task k restricted to one sample of its mean loss is the scalar K_k = ||g_k||^2 = G_kk,
the diagonal of the task Gramian G = J J^T (g_k = dL_k/dW over the shared parameters). Tasks whose
kernel is small converge slowly; NTKMTL equalises the rates by weighting each task's gradient by a
power of its kernel's share:

    a_k = T (tr G / G_kk)^p,   shared update d = sum_k a_k g_k,

p = ``ntk_exp`` (the paper's square root, 0.5; the authors' NYUv2 script uses 0.75). With p = 0.5,
a_k g_k = T sqrt(sum_j ||g_j||^2) g_k / ||g_k||: unit task gradients, scaled alike. The factor T is
the code's ("to match the sum loss"). Each head receives its own task's gradient. ``max_norm``
(default 1.0, the authors' code): the shared parameters' gradient is then clipped to that global
norm; 0 turns the clipping off. A task whose gradient is zero gets weight 0 (the code would divide by
zero). Tasks absent from the batch are left out of G.

NTKMTL-SR, the variant that estimates each task's kernel at the shared representation from
chunks of the batch and weights the losses: :class:`NTKMTLSR` (``ntkmtl_sr``).

Cost: as every Jacobian method (T backward passes, T x |W|); ``mode``: J, G or Z (at the shared
representation the kernel is that of the representation gradients, as the "-UB" variants).
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, Strategy, clip_shared_gradients
from medmtl.strategies.gradient_combination import GradientCombination, task_jacobian


def kernel_ratio_powers(kernels: torch.Tensor, ntk_exp: float) -> torch.Tensor:
    """(sum_k K_k / K_i)^p for every task i, 0 where K_i = 0 (the code would divide by zero): the
    weighting both NTKMTL variants share, on scalar kernels or largest eigenvalues."""
    ratio = kernels.sum() / kernels.clamp_min(torch.finfo(kernels.dtype).tiny)
    return torch.where(kernels > 0, ratio**ntk_exp, torch.zeros_like(kernels))


class NTKMTL(GradientCombination):
    def __init__(self, ntk_exp: float = 0.5, max_norm: float = 1.0, mode: str = "jacobian", jacobian_method: str = "loop"):
        super().__init__(mode, jacobian_method)
        if not ntk_exp > 0:
            raise ConfigError(f"optim.strategy.ntk_exp must be a positive number, got {ntk_exp!r}.")
        if not max_norm >= 0:
            raise ConfigError(f"optim.strategy.max_norm must be >= 0 (0: no clipping), got {max_norm!r}.")
        self.ntk_exp = ntk_exp
        self.shared_max_norm = max_norm

    def combination_weights(self, gramian, losses, jacobian=None, names=None):
        kernel = gramian.diagonal()
        return kernel.shape[0] * kernel_ratio_powers(kernel, self.ntk_exp)


class NTKMTLSR(Strategy):
    """``ntkmtl_sr``: NTKMTL-SR (Qin et al. 2025), the kernels at the shared representation, from
    chunks of the batch, as loss weights.

    The batch is cut into n = ``chunks`` consecutive pieces (``torch.tensor_split``); L_ji is task
    i's loss on chunk j (the task's loss with only that chunk's samples labelled). With Z the
    shared representation (``model.representation``; all its tensors at once) and J_i the n x |Z|
    matrix of rows dL_ji/dZ, task i's kernel is K_i = J_i J_i^T (n x n) and

        lambda_i = largest eigenvalue of K_i,    w_i = (sum_k lambda_k / lambda_i)^p,
        update: one backward of sum_i w_i L_i   (w detached, L_i the task's loss on the batch),

    p = ``ntk_exp``. This is the authors' code's NTKMTL-SR path (commented in their trainers:
    per-sample losses averaged in ``num_split`` chunks, one ``autograd.grad`` per chunk and task
    with respect to the representation, ``eigvalsh``, the weights applied to the losses, no T
    factor). Their CelebA and Cityscapes scripts split the batch in 4, their NYUv2 script keeps it
    whole (n = 1: lambda_i = |dL_i/dZ|^2); the default here is 1 (the dense-prediction setting),
    ``chunks: 4`` is the other. Their loss is the mean of the chunk losses, ours the task's loss on
    the batch: the same for equal chunks of fully labelled samples, and the task's own normalisation
    under partial labels. Their SR path clips before the backward, i.e. not at all: ``max_norm``
    defaults to 0 (> 0 clips the shared gradient to that global norm).

    A chunk without a labelled sample of task i contributes no row to J_i; a task absent from the
    batch, or whose kernel is zero, gets weight 0. Under DDP each process cuts its own batch in n;
    chunk j of the union is the union of the processes' chunks j (the union ordered as the
    processes' samples interleaved), its loss the union's (:meth:`StepContext.losses`), and the
    union's kernel sum_r J_ir J_ir^T / R^2 (rows of different samples live on different ranks;
    each rank's gradient of the union loss is R times the union's): exact when every process's
    batch is a multiple of n. Cost: one forward, n x T backward passes through the heads only, one
    full backward.
    """

    def __init__(self, ntk_exp: float = 0.5, chunks: int = 1, max_norm: float = 0.0):
        super().__init__()
        if not ntk_exp > 0:
            raise ConfigError(f"optim.strategy.ntk_exp must be a positive number, got {ntk_exp!r}.")
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ConfigError(f"optim.strategy.chunks must be an integer >= 1, got {chunks!r}.")
        if not max_norm >= 0:
            raise ConfigError(f"optim.strategy.max_norm must be >= 0 (0: no clipping), got {max_norm!r}.")
        self.ntk_exp = ntk_exp
        self.chunks = chunks
        self.shared_max_norm = max_norm

    def chunk_batches(self, ctx: StepContext, batch: Batch) -> list[Batch]:
        """``batch`` once per chunk, each task labelled on that chunk's samples only."""
        first = ctx.inputs(batch)[0]
        size = first.shape[0]
        result: list[Batch] = []
        for piece in torch.tensor_split(torch.arange(size, device=first.device), self.chunks):
            inside = torch.zeros(size, dtype=torch.bool, device=first.device)
            inside[piece] = True
            masks = {}
            for task in ctx.tasks:
                present = task.present(batch)
                masks[f"present/{task.name}"] = inside if present is None else inside & present.to(inside.device).bool()
            result.append(dict(batch) | masks)
        return result

    def kernel_eigenvalues(
        self, ctx: StepContext, outputs, batch: Batch, names: list[str], z: list[torch.Tensor]
    ) -> torch.Tensor:
        """lambda_i of every task in ``names`` (the union's under DDP), in float64; row j of J_i
        is chunk j's (zero where the chunk has no labelled sample of task i)."""
        width = sum(t.numel() for t in z)
        jacobians = {n: z[0].new_zeros(self.chunks, width, dtype=torch.float64) for n in names}
        for j, chunk in enumerate(self.chunk_batches(ctx, batch)):
            losses = ctx.losses(outputs, chunk, names)
            if losses:
                rows = task_jacobian(torch.stack(list(losses.values())), z)
                for name, row in zip(losses, rows):
                    jacobians[name][j] = row
        kernels = [ctx.global_mean(jacobians[n] @ jacobians[n].T) / ctx.world_size for n in names]
        return torch.stack([torch.linalg.eigvalsh(k)[-1].clamp_min(0.0) for k in kernels])

    def weights(self, eigenvalues: torch.Tensor) -> torch.Tensor:
        """w_i = (sum_k lambda_k / lambda_i)^p, 0 where lambda_i = 0."""
        return kernel_ratio_powers(eigenvalues, self.ntk_exp)

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        model = ctx.model
        shared = model.representation(*ctx.inputs(batch))
        outputs = model.heads(shared)
        losses = ctx.losses(outputs, batch)
        if not losses:
            return {}
        names = list(losses)
        weights = self.weights(self.kernel_eigenvalues(ctx, outputs, batch, names, list(shared.values())))
        stacked = torch.stack([losses[n] for n in names])
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        ctx.backward(stacked @ weights.to(stacked.dtype))
        ctx.clip_gradients(optimizer)
        clip_shared_gradients(model, self.shared_max_norm)
        optimizer.step()
        return GradientCombination.logged(losses, stacked, names, weights)
