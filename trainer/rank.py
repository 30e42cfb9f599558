"""One trainer rank: DeepSpeed ZeRO engines over the policy (and, when asked, a frozen reference model and a
value model), run as a Ray actor.

The algorithms are pure functions (`trainer.advantages`, `trainer.losses`); this module only moves tensors,
steps the optimizers and hands weights to a transport. On CPU DeepSpeed talks gloo; on GPU NCCL.

Invariants:
- one `train_step` call = exactly one optimizer step of the policy (and of the critic, if any), whatever the
  number of micro-batches; every rank steps the same number of micro-batches, even with fewer rows;
- proximal log-probs, reference log-probs and old values come from the weights before the step. Because of
  the first invariant, pi_prox is exactly `logp.detach()` of the gradient pass (the weights change only after
  the last micro-batch), so a separate no-grad policy forward runs only when the advantages need pi_prox
  before the update (KL folded into the reward) or when `trainer.prox_forward=separate` asks for it;
- `named_weights` is collective under ZeRO-3 (every rank must call it): parameters are gathered one by one.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

import torch

from buffer.schema import decode_group
from trainer.advantages import gae, sequence_advantages
from trainer.batch import TrainBatch, build_train_batch, last_token_rewards
from trainer.config import TrainerConfig
from trainer.grad_norms import exact_grad_norms, prompt_means, proxy_grad_norms
from trainer.losses import (PolicyLossParams, aggregate, kl_estimate, policy_loss, token_entropy, token_logprobs,
                            value_loss)
from trainer.precision import float32_lm_head


# per-step statistics of the policy update (token-weighted within a step, averaged over a batch's steps)
STEP_TOTALS = ("loss", "clip_fraction", "behaviour_weight_mean", "masked_fraction", "approx_kl", "logprob_gap",
               "entropy", "kl_ref")


class NonFiniteLoss(RuntimeError):
    pass


def _zero_loss(engine) -> torch.Tensor:
    """A loss of exactly 0 that still touches every parameter, so an empty micro-batch takes part in the
    gradient all-reduce like the other ranks' micro-batches."""
    return sum(p.sum() for p in engine.module.parameters()) * 0.0


def _gap_sum(prox: torch.Tensor, batch: TrainBatch) -> float:
    """Sum of |log pi_prox - log mu| over the response tokens: the engine-vs-trainer mismatch on the same tokens
    before any update (the `logprob_gap` metric, per token), the first thing to check when training misbehaves."""
    return float(((prox - batch.behaviour_logp).abs() * batch.response_mask).sum())


class ValueModel(torch.nn.Module):
    """A causal LM's backbone with a scalar head: V(prefix) at every position. Head starts at zero."""

    def __init__(self, path: str, dtype: torch.dtype):
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(path, dtype=dtype)
        self.head = torch.nn.Linear(self.backbone.config.hidden_size, 1, dtype=dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1).float()  # [B, T+1]


class TrainerRank:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str,
                 cfg: TrainerConfig, seed: int, temperature: float = 1.0):
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        # The rollout's sampling temperature: every log-prob here is of softmax(logits / T), the distribution the
        # engine sampled from, so that pi_theta, pi_prox and the behaviour mu compare like with like.
        self.temperature = temperature
        self.seed, self.batches_trained = seed, 0  # both seed the mini-batch shuffles (trainer.ppo_epochs > 1)
        self.use_gpu = cfg.gpus_per_rank > 0
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if not self.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            torch.set_num_threads(max(1, int(cfg.cpus_per_rank)))
        import deepspeed
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed + rank)
        deepspeed.init_distributed(dist_backend="nccl" if self.use_gpu else "gloo")
        self.dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        policy.config.use_cache = False
        float32_lm_head(policy)  # before deepspeed.initialize: see trainer/precision.py
        self.engine = self._deepspeed(policy, cfg.lr)
        self.ref = None
        if cfg.loss.kl_coef > 0:  # frozen initial policy; sharded like the policy under ZeRO-3
            ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype).eval().requires_grad_(False)
            float32_lm_head(ref)
            self.ref = self._deepspeed(ref, None) if cfg.zero_stage == 3 else ref.to(self.engine.device)
        self.critic = self._deepspeed(ValueModel(model_path, self.dtype), cfg.critic.lr) \
            if cfg.advantage.name == "gae" else None
        self.transport = None

    def _deepspeed(self, model: torch.nn.Module, lr: float | None):
        import deepspeed

        optimizer = None if lr is None else torch.optim.AdamW(
            model.parameters(), lr=lr, betas=tuple(self.cfg.adam_betas), weight_decay=self.cfg.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # we cut micro-batches ourselves (variable sizes)
            "gradient_accumulation_steps": self.cfg.micro_batches,
            "train_batch_size": self.cfg.micro_batches * self.world_size,
            "gradient_clipping": self.cfg.grad_clip,
            "zero_optimization": {"stage": self.cfg.zero_stage},
            "bf16": {"enabled": self.cfg.dtype == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        return engine

    def set_transport(self, name: str, receivers: list) -> None:
        from trainer.weight_sync import make_transport

        self.transport = make_transport(name, receivers)

    def _slices(self, n: int) -> list[slice]:
        """Exactly cfg.micro_batches slices (some may be empty), so every rank steps the same number of times."""
        k = self.cfg.micro_batches
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k)]

    def _logits(self, model, mb: TrainBatch) -> torch.Tensor:
        """[b, T, V] logits at the sampling temperature (the reference model's too: KL between like and like)."""
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1]
        return logits if self.temperature == 1.0 else logits / self.temperature

    @property
    def _updates_per_batch(self) -> int:
        return self.cfg.ppo_epochs * self.cfg.mini_batches_per_step

    @property
    def _separate_prox_forward(self) -> bool:
        # pi_prox is logp.detach() of the gradient pass only while one optimizer step uses the whole batch
        kl_in_reward = self.ref is not None and self.cfg.loss.kl_in == "reward"
        return kl_in_reward or self.cfg.prox_forward == "separate" or self._updates_per_batch > 1

    def _mini_batches(self, batch: TrainBatch) -> list[torch.Tensor]:
        """Row indices of each optimizer step: ppo_epochs passes over mini_batches_per_step mini-batches of whole
        groups (a group's advantages were centred on the group). The first epoch keeps the batch order; later
        ones reshuffle the groups, seeded, so every rank and every rerun cuts the same way."""
        num_groups = int(batch.group_ids.max()) + 1 if len(batch.group_ids) else 0
        rows_of = [torch.nonzero(batch.group_ids == g).squeeze(-1).cpu() for g in range(num_groups)]
        gen = torch.Generator().manual_seed(hash((self.seed, self.rank, self.batches_trained)) % 2**63)
        out = []
        for epoch in range(self.cfg.ppo_epochs):
            order = torch.arange(num_groups) if epoch == 0 else torch.randperm(num_groups, generator=gen)
            for chunk in torch.tensor_split(order, self.cfg.mini_batches_per_step):
                rows = [rows_of[g] for g in chunk.tolist()]
                out.append(torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long))
        return out

    @torch.no_grad()
    def _before_step(self, batch: TrainBatch, slices: list[slice]) -> dict[str, torch.Tensor]:
        """What must come from the weights before the step and is not a by-product of the gradient pass, for the
        whole batch: [B, T] each ("prox" and its proxy "grad_norms" only with a separate forward)."""
        out = {"prox": [], "ref": [], "values": [], "grad_norms": []}
        for sl in slices:
            mb = batch.select(sl)
            if not len(mb.rewards):
                continue
            if self._separate_prox_forward:
                logits = self._logits(self.engine, mb)
                out["prox"].append(token_logprobs(logits, mb.targets))
                if self.cfg.grad_norm_estimate == "proxy":
                    out["grad_norms"].append(proxy_grad_norms(logits, mb.targets, mb.response_mask))
            if self.ref is not None:
                out["ref"].append(token_logprobs(self._logits(self.ref, mb), mb.targets))
            if self.critic is not None:
                out["values"].append(self.critic(mb.input_ids, mb.attention_mask)[:, :-1])
        return {k: torch.cat(v) if v else None for k, v in out.items()}

    def _advantages(self, batch: TrainBatch, before: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token advantages [B, T] (and GAE returns), with the KL penalty folded into rewards if asked."""
        loss_cfg, adv_cfg, mask = self.cfg.loss, self.cfg.advantage, batch.response_mask
        kl = kl_estimate(before["prox"], before["ref"], loss_cfg.kl_estimator) * mask \
            if before["ref"] is not None and loss_cfg.kl_in == "reward" else None
        if adv_cfg.name == "gae":
            token_rewards = last_token_rewards(batch, batch.rewards)
            if kl is not None:
                token_rewards = token_rewards - loss_cfg.kl_coef * kl
            return gae(token_rewards, before["values"], mask, gamma=adv_cfg.gamma, lam=adv_cfg.lam)
        rewards = batch.rewards if kl is None else batch.rewards - loss_cfg.kl_coef * kl.sum(-1)
        seq_adv = sequence_advantages(rewards, batch.group_ids, name=adv_cfg.name,
                                      scale_by_std=adv_cfg.scale_by_std, batch_center=adv_cfg.batch_center)
        return seq_adv[:, None] * mask, None  # [B, T]

    def _exact_grad_norms(self, batch: TrainBatch, slices: list[slice]) -> tuple[torch.Tensor, float]:
        """[B] per-sample norms with the weights before the step: one backward per sample (autograd.grad leaves
        .grad alone), and their seconds."""
        t0 = time.perf_counter()
        module = self.engine.module
        norms = torch.cat([exact_grad_norms(module, mb.input_ids, mb.attention_mask, mb.targets, mb.response_mask)
                           for mb in (batch.select(sl) for sl in slices) if len(mb.rewards)])
        return norms, time.perf_counter() - t0

    def _prompt_grad_norms(self, batch: TrainBatch, norms: torch.Tensor, groups: list) -> dict[str, float]:
        """Per-prompt G_i: the mean over each group's accepted samples."""
        means = prompt_means(norms.detach(), batch.group_ids, batch.rewards >= self.cfg.accept_threshold)
        return {groups[g].prompt_id: v for g, v in means.items()}

    def train_step(self, encoded_groups: list[bytes]) -> dict:
        """Train on one popped batch: ppo_epochs x mini_batches_per_step optimizer steps (one by default)."""
        t0 = time.perf_counter()
        groups = [decode_group(g) for g in encoded_groups]
        batch = build_train_batch(groups).to(self.engine.device)
        slices = self._slices(len(batch.rewards))
        before = self._before_step(batch, slices)
        estimate, norms, grad_norm_s = self.cfg.grad_norm_estimate, None, 0.0
        if estimate == "exact" and len(batch.rewards):
            norms, grad_norm_s = self._exact_grad_norms(batch, slices)
        advantages, returns = self._advantages(batch, before) if len(batch.rewards) else (None, None)
        totals = dict.fromkeys(STEP_TOTALS, 0.0)
        proxy = (None, 0.0)
        for i, rows in enumerate(self._mini_batches(batch)):
            rows = rows.to(batch.rewards.device)
            step_totals, step_proxy = self._policy_update(batch.select(rows), before, advantages, rows)
            if i == 0:  # the first step's pass is at the weights before the update
                proxy = step_proxy
            for k, v in step_totals.items():
                totals[k] += v / self._updates_per_batch  # the mean over this batch's optimizer steps
        self.batches_trained += 1
        if before["prox"] is not None:  # else the (single) gradient pass measured it: see _policy_update
            totals["logprob_gap"] = _gap_sum(before["prox"], batch) / max(int(batch.response_mask.sum()), 1)
        if estimate == "proxy" and len(batch.rewards):
            norms, grad_norm_s = proxy
        grad_norms = self._prompt_grad_norms(batch, norms, groups) if norms is not None else {}
        if self.critic is not None:
            totals["value_loss"] = self._critic_update(batch, slices, before, returns)
        rewards = batch.rewards.tolist()
        lengths = batch.response_mask.sum(-1).tolist()
        return {**totals, "tokens": batch.num_tokens, "seconds": time.perf_counter() - t0,
                "optimizer_steps": self._updates_per_batch, "grad_norms": grad_norms, "grad_norm_s": grad_norm_s,
                "group_rewards": [g.rewards.tolist() for g in groups],  # per group: its size and pass rate
                "prompt_ids": [g.prompt_id for g in groups],
                "sequences": len(rewards), "reward_mean": sum(rewards) / max(len(rewards), 1),
                "response_len_mean": sum(lengths) / max(len(lengths), 1)}

    def _policy_update(self, batch: TrainBatch, before: dict, advantages,
                       rows: torch.Tensor) -> tuple[dict, tuple[torch.Tensor | None, float]]:
        """One optimizer step over `batch` (the popped batch's `rows`), in cfg.micro_batches micro-batches. Returns
        the step's totals, and the proxy gradient norms with their seconds (taken from this pass's logits unless
        the separate forward already made them; in row order only when `rows` is the whole batch in order)."""
        cfg = self.cfg.loss
        proxy_norms, proxy_s = [], 0.0
        params = PolicyLossParams(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip,
                                  max_behaviour_weight=cfg.max_behaviour_weight, tis_cap=cfg.tis_cap)
        step_tokens = max(int(batch.response_mask.sum()), 1)
        norm = dict(step_tokens=step_tokens, step_sequences=len(batch.rewards), constant=cfg.aggregation_constant)
        prox_all = before["prox"][rows] if before["prox"] is not None else None
        ref_all = before["ref"][rows] if before["ref"] is not None else None
        adv_all = advantages[rows] if advantages is not None else None
        totals = dict.fromkeys(STEP_TOTALS, 0.0)
        for sl in self._slices(len(batch.rewards)):
            mb = batch.select(sl)
            if not len(mb.rewards):  # this rank has fewer rows than micro-batches: a zero step keeps ranks in step
                loss = _zero_loss(self.engine)
            else:
                mask = mb.response_mask
                logits = self._logits(self.engine, mb)
                logp = token_logprobs(logits, mb.targets)
                prox = prox_all[sl] if prox_all is not None else logp.detach()
                if self.cfg.grad_norm_estimate == "proxy" and before["grad_norms"] is None:
                    t0 = time.perf_counter()
                    proxy_norms.append(proxy_grad_norms(logits.detach(), mb.targets, mask))
                    proxy_s += time.perf_counter() - t0
                per_token, stats = policy_loss(cfg.name, logp, prox, mb.behaviour_logp, adv_all[sl], mask, params)
                loss = aggregate(per_token, mask, cfg.aggregation, **norm)
                share = int(mask.sum()) / step_tokens
                # entropy is logged every step (cheap next to the forward); it joins the loss only if asked
                entropy = token_entropy(logits if cfg.entropy_coef > 0 else logits.detach())
                totals["entropy"] += float((entropy.detach() * mask).sum()) / step_tokens
                if cfg.entropy_coef > 0:
                    loss = loss - cfg.entropy_coef * aggregate(entropy, mask, cfg.aggregation, **norm)
                if ref_all is not None:
                    kl = kl_estimate(logp, ref_all[sl], cfg.kl_estimator)
                    totals["kl_ref"] += float((kl.detach() * mask).sum()) / step_tokens
                    if cfg.kl_in == "loss":
                        loss = loss + cfg.kl_coef * aggregate(kl, mask, cfg.aggregation, **norm)
                for k, v in asdict(stats).items():
                    totals[k] += v * share
                if prox_all is None:  # pi_prox from this pass; a separate forward's is measured over the batch
                    totals["logprob_gap"] += _gap_sum(prox, mb) / step_tokens
                totals["loss"] += loss.item()
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"rank {self.rank}: loss is {loss.item()} before the step; the step was not "
                                    f"taken and the batch stays in the buffer. Lower trainer.lr or check rewards")
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()
        if before["grad_norms"] is not None:
            return totals, (before["grad_norms"], 0.0)  # made by the separate forward (not timed apart)
        return totals, (torch.cat(proxy_norms) if proxy_norms else None, proxy_s)

    def _critic_update(self, batch: TrainBatch, slices: list[slice], before: dict, returns) -> float:
        total, step_tokens = 0.0, max(int(batch.response_mask.sum()), 1)
        for sl in slices:
            mb = batch.select(sl)
            if not len(mb.rewards):
                loss = _zero_loss(self.critic)
            else:
                values = self.critic(mb.input_ids, mb.attention_mask)[:, :-1]  # [b, T]
                per_token = value_loss(values, before["values"][sl], returns[sl], self.cfg.critic.value_clip)
                loss = aggregate(per_token, mb.response_mask, "token_mean", step_tokens=step_tokens, step_sequences=1)
                total += loss.item()
            self.critic.backward(loss, scale_wrt_gas=False)
            self.critic.step()
        return total

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
