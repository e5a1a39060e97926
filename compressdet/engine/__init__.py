"""The training loop shared by the train, prune and qat stages (see docs/architecture.md)."""

from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .distributed import CrossProcessBatchNorm2d, all_reduce_sum, convert_sync_batchnorm, is_dist, unwrap
from .hooks import HookBase
from .trainer import (
    NonFiniteLossError,
    Trainer,
    TrainerBase,
    clip_grad_norm_per_tensor,
    cosine_lr_lambda,
    seed_param_groups,
)

__all__ = ["Trainer", "TrainerBase", "HookBase", "NonFiniteLossError", "cosine_lr_lambda",
           "clip_grad_norm_per_tensor", "seed_param_groups", "CrossProcessBatchNorm2d", "convert_sync_batchnorm",
           "all_reduce_sum", "is_dist", "unwrap", "save_checkpoint", "load_checkpoint", "get_rng_state",
           "set_rng_state"]
