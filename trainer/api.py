"""The trainer's contract: what launcher/ and plugins may use of trainer/ (they import nothing else).

Plugin points, each a registry resolving a registered name or a dotted path (plugins.Registry):
- POLICY_LOSSES (`trainer.loss.name`): `(logp, prox_logp, behaviour_logp, advantages, mask, params) ->
  (per-token loss [B, T], LossStats)`; the driver binds the parameters (`make_policy_loss`) and hands the
  resulting `LossFn` to `TrainerRank.update` / `train_batch`;
- ADVANTAGES (`trainer.advantage.name`): sequence-level `(rewards [B], group_ids [B], cfg) -> [B]` over the whole
  batch, or token-level with a critic (`uses_critic = True`): `(token_rewards, values, mask, cfg) -> (adv, returns)`;
- TRANSPORTS (`trainer.weight_transport`): a `WeightTransport` class `(receivers, TransportOptions)`, the receivers
  being rollout.api.WeightReceiver actor handles (never imported); built in: store, disk, cuda_ipc, nccl.
`TrainerRank` is the Ray actor; its step phases return a `StepResult` per rank, `merge_step_results` the step's.
"""
from __future__ import annotations

from trainer.advantages import ADVANTAGES, uses_critic
from trainer.config import AdvantageConfig, CriticConfig, LossConfig, TrainerConfig, problems
from trainer.losses import POLICY_LOSSES, LossFn, LossStats, PolicyLossParams, make_policy_loss
from trainer.rank import TrainerRank
from trainer.step_result import StepResult
from trainer.step_result import merge as merge_step_results
from trainer.weight_sync import TRANSPORTS, Buckets, TransportOptions, WeightSyncError, WeightTransport

__all__ = ["ADVANTAGES", "POLICY_LOSSES", "TRANSPORTS", "AdvantageConfig", "Buckets", "CriticConfig", "LossConfig",
           "LossFn", "LossStats", "PolicyLossParams", "StepResult", "TrainerConfig", "TrainerRank",
           "TransportOptions", "WeightSyncError", "WeightTransport", "make_policy_loss", "merge_step_results",
           "problems", "uses_critic"]
