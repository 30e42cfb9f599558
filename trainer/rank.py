"""One trainer rank: DeepSpeed ZeRO engines over the policy (and, when asked, a frozen reference model and a
value model), run as a Ray actor.

The algorithms are pure functions (`trainer.advantages`, `trainer.losses`); this module only moves tensors,
steps the optimizers and hands weights to a transport. On CPU DeepSpeed talks gloo; on GPU NCCL.

A step is four phases that every rank runs together, each a method the driver calls (`train_batch` runs all):
load_batch (the whole popped batch; trainer/step_plan.py cuts it the same way on every rank) -> compute_logprobs
-> compute_advantages -> update(loss_fn) -> StepResult. N ranks compute what one rank computes: losses divide by
the whole step's token counts and sequence-level advantages see the whole batch.

Invariants:
- by default one step = exactly one optimizer step of the policy (and of the critic, if any), whatever the
  number of micro-batches (trainer.ppo_epochs / mini_batches_per_step ask for more); every rank steps the same
  number of micro-batches, even with fewer rows or none;
- proximal log-probs, reference log-probs and old values come from the weights before the step. Because of
  the first invariant, pi_prox is exactly `logp.detach()` of the gradient pass (the weights change only after
  the last micro-batch), so a separate no-grad policy forward runs only when the advantages need pi_prox
  before the update (KL folded into the reward) or when `trainer.prox_forward=separate` asks for it;
- sending weights is collective under ZeRO-3 (every rank iterates the buckets): parameters are gathered a bucket
  at a time;
- a loss that is not finite on any rank makes every rank skip that optimizer step (trainer/nonfinite.py).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from buffer.api import Group, decode_group
from trainer.advantages import ADVANTAGES, uses_critic
from trainer.batch import TrainBatch, build_train_batch, last_token_rewards
from trainer.config import TrainerConfig
from trainer.grad_norms import exact_grad_norms, prompt_means, proxy_grad_norms
from trainer.nonfinite import backward_and_step, zero_loss
from trainer.losses import LossFn, aggregate, kl_estimate, token_entropy, token_logprobs, value_loss
from trainer.precision import float32_lm_head
from trainer.value_model import ValueModel
from trainer.step_plan import MiniBatch, StepPlan, plan_step
from trainer.step_result import COUNTED_MEANS, UPDATE_STATS, StepResult


log = logging.getLogger("slipstream.trainer")


def _gap_sum(prox: torch.Tensor, batch: TrainBatch) -> float:
    """Sum of |log pi_prox - log mu| over the response tokens: the engine-vs-trainer mismatch on the same tokens
    before any update (the `logprob_gap` metric, per token), the first thing to check when training misbehaves."""
    return float(((prox - batch.behaviour_logp).abs() * batch.response_mask).sum())


@dataclass
class _Step:
    """One popped batch on this rank, from load_batch to update: the whole batch's groups and plan (all ranks
    know them), this rank's rows, and what each phase has computed so far."""
    groups: list[Group]
    plan: StepPlan
    mine: list[int]  # this rank's groups (indices into the popped batch), in their order in `batch`
    batch: TrainBatch  # this rank's groups only
    rows_of: dict[int, torch.Tensor]  # group index in the popped batch -> its rows in `batch`
    global_rows: torch.Tensor  # [B_rank] each row's index among all the batch's samples
    slices: list[slice]
    before: dict = field(default_factory=dict)
    norms: torch.Tensor | None = None  # per-sample gradient norms (exact: before the update)
    grad_norm_s: float = 0.0
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    seconds: float = 0.0

    @property
    def response_tokens(self) -> int:
        """Of the whole batch, all ranks together."""
        return sum(g.num_response_tokens for g in self.groups)


class TrainerRank:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str,
                 cfg: TrainerConfig, seed: int, temperature: float = 1.0):
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        # The rollout's sampling temperature: every log-prob here is of softmax(logits / T), the distribution the
        # engine sampled from, so that pi_theta, pi_prox and the behaviour mu compare like with like.
        self.temperature = temperature
        self.seed, self.batches_trained = seed, 0  # both seed the mini-batch shuffles (trainer.ppo_epochs > 1)
        self.model_path = model_path
        self.use_gpu = cfg.gpus_per_rank > 0
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if not self.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            torch.set_num_threads(max(1, int(cfg.cpus_per_rank)))
        import deepspeed
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed + rank)
        if rank > 0 and world_size > 1:  # a clear error, not torch's 30-minute wait, when rank 0 is unreachable
            from trainer.rendezvous import wait_for_rank0

            wait_for_rank0(master_addr, master_port, cfg.rendezvous_timeout_s, rank)
        if not self.use_gpu:
            # DeepSpeed's CPU backend would compile its shared-memory all-reduce op here (2.5 min on 2 cores, and
            # again whenever two processes' compiler flags differ), which only its inference tensor parallelism uses
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
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
        self.advantage = ADVANTAGES.resolve(cfg.advantage.name)
        self.critic = self._deepspeed(ValueModel(model_path, self.dtype), cfg.critic.lr) \
            if uses_critic(self.advantage) else None
        self.transport = None
        self._step: _Step | None = None  # the batch between load_batch and update

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

    def set_transport(self, name: str, receivers: list, weight_dir: str = "") -> None:
        """Rank 0's transport to the rollout workers (`weight_dir`: the disk transport's default directory)."""
        from trainer.weight_sync import TransportOptions, make_transport

        cfg = self.cfg
        self.transport = make_transport(name, receivers, TransportOptions(
            timeout_s=cfg.weight_sync_timeout_s, weight_dir=cfg.weight_dir or weight_dir,
            keep_versions=cfg.weight_keep_versions))

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

    # -- the phases of a step, in the order the driver calls them (every rank, each phase together) ----------
    def load_batch(self, encoded_groups: list[bytes]) -> None:
        """The whole popped batch: every rank plans the same cut (trainer/step_plan.py) and keeps its own groups."""
        t0 = time.perf_counter()
        groups = [decode_group(g) for g in encoded_groups]
        plan = plan_step([g.num_response_tokens for g in groups], [len(g.samples) for g in groups],
                         world_size=self.world_size, ppo_epochs=self.cfg.ppo_epochs,
                         mini_batches_per_step=self.cfg.mini_batches_per_step, seed=self.seed,
                         batch_index=self.batches_trained)
        mine = plan.groups_of(self.rank)
        batch = build_train_batch([groups[g] for g in mine]).to(self.engine.device)
        first_row = [0]
        for g in groups:
            first_row.append(first_row[-1] + len(g.samples))
        global_rows = torch.tensor([first_row[g] + j for g in mine for j in range(len(groups[g].samples))],
                                   dtype=torch.long, device=batch.rewards.device)
        rows_of = {g: torch.nonzero(batch.group_ids == i).squeeze(-1) for i, g in enumerate(mine)}
        self._step = _Step(groups, plan, mine, batch, rows_of, global_rows, self._slices(len(batch.rewards)))
        self._step.seconds += time.perf_counter() - t0

    def compute_logprobs(self) -> None:
        """Proximal and reference log-probs and old values with the weights before the update (what the gradient
        pass cannot give), and exact per-sample gradient norms when asked."""
        t0, st = time.perf_counter(), self._step
        st.before = self._before_step(st.batch, st.slices)
        if self.cfg.grad_norm_estimate == "exact" and len(st.batch.rewards):
            st.norms, st.grad_norm_s = self._exact_grad_norms(st.batch, st.slices)
        st.seconds += time.perf_counter() - t0

    def compute_advantages(self) -> None:
        """Token advantages [B, T] of this rank's rows (and GAE returns); sequence-level estimators see the whole
        batch's rewards, so a batch-wide std is the step's, not this rank's."""
        t0, st = time.perf_counter(), self._step
        st.advantages, st.returns = self._advantages(st)
        st.seconds += time.perf_counter() - t0

    def update(self, loss_fn: LossFn) -> StepResult:
        """ppo_epochs x mini_batches_per_step optimizer steps of `loss_fn` (one by default); the step's result."""
        t0, st = time.perf_counter(), self._step
        totals, proxy, grad_norms, skipped = dict.fromkeys(UPDATE_STATS, 0.0), (None, 0.0), [], 0
        for i, mini in enumerate(st.plan.mini_batches):
            rows = self._rows(st, mini)
            step_totals, step_proxy, grad_norm = self._policy_update(st, rows, mini, loss_fn)
            if i == 0:  # the first step's pass is at the weights before the update
                proxy = step_proxy
            grad_norms.append(grad_norm)
            skipped += step_totals.pop("skipped_steps", 0)
            for k, v in step_totals.items():
                totals[k] += v / self._updates_per_batch  # the mean over this batch's optimizer steps
        if st.before["prox"] is not None:  # else the (single) gradient pass measured it: see _policy_update
            totals["logprob_gap"] = _gap_sum(st.before["prox"], st.batch) / max(st.response_tokens, 1)
        if self.cfg.grad_norm_estimate == "proxy" and len(st.batch.rewards):
            st.norms, st.grad_norm_s = proxy
        value = self._critic_update(st) if self.critic is not None else None
        st.seconds += time.perf_counter() - t0
        self._step, self.batches_trained = None, self.batches_trained + 1
        return replace(self._result(st, totals, value, grad_norms), skipped_steps=skipped)

    def train_batch(self, encoded_groups: list[bytes], loss_fn: LossFn) -> StepResult:
        """All phases of one step in one call (scripts and tests; the driver calls them one by one, timed)."""
        self.load_batch(encoded_groups)
        self.compute_logprobs()
        self.compute_advantages()
        return self.update(loss_fn)

    # -- inside the phases ----------------------------------------------------------------------------------
    def _rows(self, st: _Step, mini: MiniBatch) -> torch.Tensor:
        """This rank's rows of a mini-batch, in its group order."""
        rows = [st.rows_of[g] for g in mini.groups if g in st.rows_of]
        return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=st.batch.rewards.device)

    def _result(self, st: _Step, totals: dict, value: float | None, grad_norms: list) -> StepResult:
        rewards = [s.reward for g in st.groups for s in g.samples]
        lengths = [len(s.response_ids) for g in st.groups for s in g.samples]
        norms = [n for n in grad_norms if n is not None]
        return StepResult(
            **totals, value_loss=value, tokens=st.batch.num_tokens, grad_norms=self._prompt_grad_norms(st),
            grad_norm=sum(norms) / len(norms) if norms else None, optimizer_steps=self._updates_per_batch,
            sequences=len(rewards), reward_mean=sum(rewards) / max(len(rewards), 1),
            response_len_mean=sum(lengths) / max(len(lengths), 1),
            group_rewards=[g.rewards.tolist() for g in st.groups], prompt_ids=[g.prompt_id for g in st.groups],
            seconds=st.seconds, grad_norm_s=st.grad_norm_s)

    @torch.no_grad()
    def _before_step(self, batch: TrainBatch, slices: list[slice]) -> dict[str, torch.Tensor]:
        """What must come from the weights before the step and is not a by-product of the gradient pass, for this
        rank's rows: [B, T] each ("prox" and its proxy "grad_norms" only with a separate forward)."""
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

    def _advantages(self, st: _Step) -> tuple[torch.Tensor, torch.Tensor | None]:
        loss_cfg, adv_cfg, batch, before = self.cfg.loss, self.cfg.advantage, st.batch, st.before
        mask = batch.response_mask
        kl = kl_estimate(before["prox"], before["ref"], loss_cfg.kl_estimator) * mask \
            if before["ref"] is not None and loss_cfg.kl_in == "reward" else None
        if uses_critic(self.advantage):
            token_rewards = last_token_rewards(batch, batch.rewards)
            if kl is not None:
                token_rewards = token_rewards - loss_cfg.kl_coef * kl
            return self.advantage(token_rewards, before["values"], mask, adv_cfg)
        device = batch.rewards.device
        rewards = torch.tensor([s.reward for g in st.groups for s in g.samples], dtype=torch.float32, device=device)
        group_ids = torch.tensor([i for i, g in enumerate(st.groups) for _ in g.samples], dtype=torch.long,
                                 device=device)
        if kl is not None:  # every rank needs every row's KL: a sum over ranks of each rank's rows
            kl_all = torch.zeros_like(rewards)
            kl_all[st.global_rows] = kl.sum(-1)
            if self.world_size > 1:
                torch.distributed.all_reduce(kl_all)
            rewards = rewards - loss_cfg.kl_coef * kl_all
        seq_adv = self.advantage(rewards, group_ids, adv_cfg)[st.global_rows]
        return seq_adv[:, None] * mask, None  # [B, T]

    def _exact_grad_norms(self, batch: TrainBatch, slices: list[slice]) -> tuple[torch.Tensor, float]:
        """[B] per-sample norms with the weights before the step: one backward per sample (autograd.grad leaves
        .grad alone), and their seconds."""
        t0 = time.perf_counter()
        module = self.engine.module
        norms = torch.cat([exact_grad_norms(module, mb.input_ids, mb.attention_mask, mb.targets, mb.response_mask)
                           for mb in (batch.select(sl) for sl in slices) if len(mb.rewards)])
        return norms, time.perf_counter() - t0

    def _prompt_grad_norms(self, st: _Step) -> dict[str, float]:
        """Per-prompt G_i of this rank's groups: the mean over each group's accepted samples."""
        if st.norms is None:
            return {}
        means = prompt_means(st.norms.detach(), st.batch.group_ids, st.batch.rewards >= self.cfg.accept_threshold)
        return {st.groups[st.mine[i]].prompt_id: v for i, v in means.items()}

    def _policy_update(self, st: _Step, rows: torch.Tensor, mini: MiniBatch,
                       loss_fn: LossFn) -> tuple[dict, tuple[torch.Tensor | None, float], float | None]:
        """One optimizer step over this rank's `rows` of `mini`, in cfg.micro_batches micro-batches. Returns the
        step's totals (this rank's share of the mini-batch's), the proxy gradient norms with their seconds (taken
        from this pass's logits unless the separate forward made them; in row order only when `rows` is the whole
        batch in order), and the global gradient norm before clipping."""
        cfg, before = self.cfg.loss, st.before
        batch = st.batch.select(rows)
        proxy_norms, proxy_s = [], 0.0
        # the whole mini-batch's counts (all ranks): one rank's loss is its share of the step's
        step_tokens = max(mini.tokens, 1)
        norm = dict(step_tokens=step_tokens, step_sequences=mini.sequences, constant=cfg.aggregation_constant)
        prox_all = before["prox"][rows] if before["prox"] is not None else None
        ref_all = before["ref"][rows] if before["ref"] is not None else None
        adv_all = st.advantages[rows] if len(rows) else None
        totals, skipped = dict.fromkeys(UPDATE_STATS, 0.0), False
        counted_sums, counted_tokens = dict.fromkeys(COUNTED_MEANS, 0.0), 0
        slices = self._slices(len(batch.rewards))
        for n_mb, sl in enumerate(slices):
            mb = batch.select(sl)
            if not len(mb.rewards):  # this rank has fewer rows than micro-batches: a zero step keeps ranks in step
                loss = zero_loss(self.engine)
            else:
                mask = mb.response_mask
                logits = self._logits(self.engine, mb)
                logp = token_logprobs(logits, mb.targets)
                prox = prox_all[sl] if prox_all is not None else logp.detach()
                if self.cfg.grad_norm_estimate == "proxy" and before["grad_norms"] is None:
                    t0 = time.perf_counter()
                    proxy_norms.append(proxy_grad_norms(logits.detach(), mb.targets, mask))
                    proxy_s += time.perf_counter() - t0
                per_token, stats = loss_fn(logp, prox, mb.behaviour_logp, adv_all[sl], mask)
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
                counted = int(mask.sum()) if stats.counted_tokens is None else stats.counted_tokens
                for k, v in asdict(stats).items():
                    if k in COUNTED_MEANS:
                        counted_sums[k] += v * counted
                    elif k != "counted_tokens":
                        totals[k] += v * share
                counted_tokens += counted
                if prox_all is None:  # pi_prox from this pass; a separate forward's is measured over the batch
                    totals["logprob_gap"] += _gap_sum(prox, mb) / step_tokens
                totals["loss"] += loss.item()
            skipped = backward_and_step(self.engine, loss, self.world_size, skipped, last=n_mb == len(slices) - 1)
        totals |= self._counted_means(counted_sums, counted_tokens, st.batch.rewards.device)
        if skipped:
            log.warning("rank %d: a loss was not finite on some rank; every rank skipped this optimizer step",
                        self.rank)
            totals = dict.fromkeys(UPDATE_STATS, 0.0) | {"skipped_steps": 1}
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        if before["grad_norms"] is not None:
            return totals, (before["grad_norms"], 0.0), grad_norm  # made by the separate forward (not timed apart)
        return totals, (torch.cat(proxy_norms) if proxy_norms else None, proxy_s), grad_norm

    def _counted_means(self, sums: dict, counted_tokens: int, device) -> dict:
        """The loss's means over counted tokens for the whole mini-batch, this rank's share: its sums over the
        mini-batch's counted tokens on every rank (which the cap on the behaviour weight makes unknown beforehand: one
        all-reduce of a number per optimizer step). A mean of micro-batch means would change with the split."""
        counted = torch.tensor([counted_tokens], dtype=torch.float64, device=device)
        if self.world_size > 1:
            torch.distributed.all_reduce(counted)
        return {k: v / max(float(counted), 1.0) for k, v in sums.items()}

    def _critic_update(self, st: _Step) -> float:
        total, step_tokens, skipped = 0.0, max(st.response_tokens, 1), False
        for n_mb, sl in enumerate(st.slices):
            mb = st.batch.select(sl)
            if not len(mb.rewards):
                loss = zero_loss(self.critic)
            else:
                values = self.critic(mb.input_ids, mb.attention_mask)[:, :-1]  # [b, T]
                per_token = value_loss(values, st.before["values"][sl], st.returns[sl], self.cfg.critic.value_clip)
                loss = aggregate(per_token, mb.response_mask, "token_mean", step_tokens=step_tokens, step_sequences=1)
                total += loss.item()
            skipped = backward_and_step(self.critic, loss, self.world_size, skipped, last=n_mb == len(st.slices) - 1)
        return 0.0 if skipped else total

    def save_checkpoint(self, path: str) -> None:
        """Collective: this rank's DeepSpeed state under `path`; rank 0 also the Hugging Face model (trainer/checkpoint.py)."""
        from trainer import checkpoint

        checkpoint.save(self, path)

    def load_checkpoint(self, path: str) -> None:
        from trainer import checkpoint

        checkpoint.load(self, path)

    def _weight_buckets(self):
        from trainer.weight_sync import module_buckets

        return module_buckets(self.engine.module, self.cfg.weight_bucket_mb * 2**20)

    def send_weights(self, version: int) -> dict:
        t0 = time.perf_counter()
        if self.rank == 0:
            nbytes = self.transport.send(version, self._weight_buckets())
        else:
            for _ in self._weight_buckets():  # take part in the ZeRO-3 gathers
                pass
            nbytes = 0
        return {"seconds": time.perf_counter() - t0, "bytes": nbytes}
