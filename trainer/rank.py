"""One trainer rank: a DeepSpeed ZeRO engine over the policy, run as a Ray actor.

The loss is a function passed in (`trainer.algorithms`); this module only moves tensors, steps the
optimizer and hands weights to a transport. On CPU DeepSpeed talks gloo; on GPU NCCL.

Invariants:
- one `train_step` call = exactly one optimizer step, whatever the number of micro-batches;
- proximal log-probs are recomputed with the weights before the step (decoupled PPO needs pi_prox);
- `named_weights` is collective under ZeRO-3 (every rank must call it): parameters are gathered one by one.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

import torch

from buffer.schema import decode_group
from trainer.algorithms import decoupled_ppo_loss, token_logprobs
from trainer.batch import TrainBatch, build_train_batch
from trainer.config import TrainerConfig


class NonFiniteLoss(RuntimeError):
    pass


class TrainerRank:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str,
                 cfg: TrainerConfig, seed: int):
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        use_gpu = cfg.gpus_per_rank > 0
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if not use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            torch.set_num_threads(max(1, int(cfg.cpus_per_rank)))
        import deepspeed
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed + rank)
        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
        dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        model.config.use_cache = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                      weight_decay=cfg.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # we cut micro-batches ourselves (variable sizes)
            "gradient_accumulation_steps": cfg.micro_batches,
            "train_batch_size": cfg.micro_batches * world_size,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.dtype == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.transport = None

    def set_transport(self, name: str, receivers: list) -> None:
        from trainer.weight_sync import make_transport

        self.transport = make_transport(name, receivers)

    def _micro_batches(self, batch: TrainBatch) -> list[TrainBatch]:
        """Exactly cfg.micro_batches slices (some may be empty), so every rank steps the same number of times."""
        n, k = batch.input_ids.shape[0], self.cfg.micro_batches
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [batch.select(slice(bounds[i], bounds[i + 1])) for i in range(k)]

    def _logprobs(self, mb: TrainBatch) -> torch.Tensor:
        logits = self.engine(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits  # [b, T+1, V]
        return token_logprobs(logits[:, :-1], mb.targets)  # [b, T]

    def train_step(self, encoded_groups: list[bytes]) -> dict:
        t0 = time.perf_counter()
        loss_cfg = self.cfg.loss
        groups = [decode_group(g) for g in encoded_groups]
        batch = build_train_batch(groups, scale_adv_by_std=loss_cfg.scale_adv_by_std)
        micro = self._micro_batches(batch)
        # pi_prox: this rank's weights before the step. Plain PPO clip centres on mu instead.
        with torch.no_grad():
            prox = [self._logprobs(mb) if mb.input_ids.numel() else None for mb in micro]
        n_tokens = max(int(batch.response_mask.sum()), 1)
        totals = {"loss": 0.0, "clip_fraction": 0.0, "behaviour_weight_mean": 0.0, "masked_fraction": 0.0,
                  "approx_kl": 0.0, "logprob_gap": 0.0}
        for mb, prox_lp in zip(micro, prox):
            if prox_lp is None:  # rank got fewer rows than micro-batches: still step to keep ranks in sync
                loss = sum(p.sum() for p in self.engine.module.parameters()) * 0.0
            else:
                logp = self._logprobs(mb)
                behaviour = mb.behaviour_logp
                centre = prox_lp if loss_cfg.name == "decoupled_ppo" else behaviour
                loss, stats = decoupled_ppo_loss(
                    logp, centre, behaviour, mb.advantages, mb.response_mask, eps_low=loss_cfg.eps_low,
                    eps_high=loss_cfg.eps_high, max_behaviour_weight=loss_cfg.max_behaviour_weight,
                    normalizer=n_tokens)
                share = int(mb.response_mask.sum()) / n_tokens
                for k, v in asdict(stats).items():
                    totals[k] += v * share
                gap = ((prox_lp - behaviour).abs() * mb.response_mask).sum().item()
                totals["logprob_gap"] += gap / n_tokens
                totals["loss"] += loss.item()
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"rank {self.rank}: loss is {loss.item()} before the step; the update was "
                                    f"skipped. Lower trainer.lr or check rewards/advantages for NaN")
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()
        seconds = time.perf_counter() - t0
        rewards = [s.reward for g in groups for s in g.samples]
        lengths = [len(s.response_ids) for g in groups for s in g.samples]
        return {**totals, "tokens": batch.num_tokens, "response_tokens": n_tokens, "seconds": seconds,
                "sequences": len(rewards), "reward_mean": sum(rewards) / max(len(rewards), 1),
                "response_len_mean": sum(lengths) / max(len(lengths), 1)}

    def named_weights(self):
        """Yield (Hugging Face name, full tensor); collective under ZeRO-3."""
        import deepspeed

        for name, param in self.engine.module.named_parameters():
            if hasattr(param, "ds_id"):  # ZeRO-3 shard: gather the full tensor on every rank
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.data.detach().clone()
            else:
                yield name, param.data.detach()

    def send_weights(self, version: int) -> dict:
        t0 = time.perf_counter()
        if self.rank == 0:
            nbytes = self.transport.send(version, self.named_weights())
        else:
            for _ in self.named_weights():  # take part in the ZeRO-3 gathers
                pass
            nbytes = 0
        return {"seconds": time.perf_counter() - t0, "bytes": nbytes}

    def save(self, path: str) -> None:
        self.engine.save_checkpoint(path)
