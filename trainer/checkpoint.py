"""A trainer rank's part of a checkpoint (launcher/checkpoints.py writes the rest and makes it atomic).

Every rank calls `save` and `load` together (collective under ZeRO): DeepSpeed's own checkpoint of the policy (and
the critic) holds weights, optimizer state and step counts; rank 0 also writes `hf/`, a Hugging Face model
directory of the policy (full weights in the training dtype, the tokenizer, the config) that transformers and
vLLM load as they are: the rollout workers of a resumed run start from it, and it is what a user takes away.
The frozen reference model is not saved: it is the run's starting model, loaded from model.path again.
"""
from __future__ import annotations

import os

POLICY_TAG, CRITIC_TAG = "policy", "critic"


def save(rank, path: str) -> None:
    from transformers import AutoTokenizer

    from trainer.weight_sync import module_buckets

    os.makedirs(path, exist_ok=True)
    rank.engine.save_checkpoint(path, tag=POLICY_TAG, client_state={"batches_trained": rank.batches_trained})
    if rank.critic is not None:
        rank.critic.save_checkpoint(path, tag=CRITIC_TAG)
    full = {}
    for bucket in module_buckets(rank.engine.module, 1 << 30):  # gathered bucket by bucket under ZeRO-3
        if rank.rank == 0:
            full.update({name: t.detach().to("cpu").clone() for name, t in bucket})
    if rank.rank == 0:
        hf = os.path.join(path, "hf")
        rank.engine.module.save_pretrained(hf, state_dict=full, safe_serialization=True)
        AutoTokenizer.from_pretrained(rank.model_path).save_pretrained(hf)


def load(rank, path: str) -> None:
    _, client = rank.engine.load_checkpoint(path, tag=POLICY_TAG)
    if client is None:
        raise FileNotFoundError(f"no trainer checkpoint under {path}/{POLICY_TAG}: the run directory's checkpoint is "
                                "incomplete; resume from an earlier one")
    rank.batches_trained = client.get("batches_trained", 0)
    if rank.critic is not None:
        rank.critic.load_checkpoint(path, tag=CRITIC_TAG)
