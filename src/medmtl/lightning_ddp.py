"""Lightning's side of exact data parallelism: :class:`ExactDDPStrategy` (``trainer=ddp``).

The reductions themselves are torch-only (:mod:`medmtl.distributed`), so that the strategies and
their own-loop API import no Lightning; this module is what the Lightning trainer adds.
"""

from __future__ import annotations

import warnings

from lightning.pytorch.strategies import DDPStrategy


def is_primary_process() -> bool:
    """True on global rank 0, the one that writes the run folder's files (known from the
    launcher's environment, before the process group exists: RANK, LOCAL_RANK, SLURM_PROCID)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


class ExactDDPStrategy(DDPStrategy):
    """Lightning's DDP (process launch, process group, distributed samplers, SLURM and torchelastic
    environments, rank-0 checkpointing) without the ``DistributedDataParallel`` wrapper: the
    training context reduces what each multi-task strategy needs (module docstring). Parameters and
    buffers start from rank 0's."""

    strategy_name = "medmtl_ddp"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the values the module logs (losses, weights, metrics) are the union's on every rank already
        warnings.filterwarnings("ignore", message=r".*sync_dist=True.*distributed setting")

    def configure_ddp(self) -> None:
        """Rank 0's parameters and buffers on every rank; a lazy parameter, not sized before the
        first step (LDC-MTL's router), is left out: its strategy draws it on rank 0 then."""
        from torch.distributed.distributed_c10d import _get_default_group
        from torch.distributed.utils import _sync_module_states
        from torch.nn.parameter import is_lazy

        assert self.model is not None
        tensors = [*self.model.named_parameters(), *self.model.named_buffers()]
        lazy = {name for name, tensor in tensors if is_lazy(tensor)}
        _sync_module_states(self.model, _get_default_group(), 250 * 1024 * 1024, src=0, params_and_buffers_to_ignore=lazy)
