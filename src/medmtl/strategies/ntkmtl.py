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

Not implemented: NTKMTL-SR, the variant that estimates each task's kernel from the per-sample
gradients at the shared representation (its largest eigenvalue) and weights the losses: it needs
per-sample losses, which the tasks' loss functions do not return.

Cost: as every Jacobian method (T backward passes, T x |W|); ``mode``: J, G or Z (at the shared
representation the kernel is that of the representation gradients, as the "-UB" variants).
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.gradient_combination import GradientCombination


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
        ratio = kernel.sum() / kernel.clamp_min(torch.finfo(kernel.dtype).tiny)
        return torch.where(kernel > 0, kernel.shape[0] * ratio**self.ntk_exp, torch.zeros_like(kernel))
