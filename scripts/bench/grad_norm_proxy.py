#!/usr/bin/env python3
"""How well the cheap gradient-norm proxy ranks prompts against GVM's exact estimate, and what each costs.

Batches like the trainer's: prompts from the gvm_study pool, n samples each drawn from the model at
temperature 1, scored by exact answer. For every sample, the exact estimate (||d/dE sum_t log pi||, one
backward each) and the proxy (||onehot - softmax|| over response logits, no backward); per prompt, the mean
over accepted samples. Reports Spearman correlation per sample and per prompt, and seconds per sample.

    python scripts/bench/grad_norm_proxy.py [--model .cache/tiny-model-chain] [--prompts 64] [--n 8]
Writes docs/bench/grad_norm_proxy.json.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from buffer.schema import Group, Sample
    from rewards.builtin import exact_answer
    from rollout.tasks.addition import AdditionTask
    from trainer.batch import build_train_batch
    from trainer.grad_norms import exact_grad_norms, prompt_means, proxy_grad_norms, spearman

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model-chain"))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "grad_norm_proxy.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    prompts = AdditionTask(max_operands=5, pool_size=256).next(args.prompts)
    groups = []
    tok.padding_side = "left"
    for p in prompts:
        enc = tok([p.text] * args.n, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=20, pad_token_id=0,
                                 eos_token_id=0)
        samples = []
        for row in out[:, enc["input_ids"].shape[1]:]:
            ids = row.tolist()
            ids = ids[: ids.index(0) + 1] if 0 in ids else ids
            text = tok.decode(ids, skip_special_tokens=True)
            samples.append(Sample(prompt_ids=enc["input_ids"][0].numpy().astype("int32"),
                                  response_ids=torch.tensor(ids).numpy().astype("int32"),
                                  behaviour_logprobs=torch.zeros(len(ids)).numpy(),
                                  token_versions=torch.zeros(len(ids), dtype=torch.int32).numpy(),
                                  reward=exact_answer(p.text, text, **p.fields), finish_reason="stop"))
        groups.append(Group(prompt_id=p.prompt_id, prompt=p.text, samples=samples))
    batch = build_train_batch(groups)
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        proxy = proxy_grad_norms(logits, batch.targets, batch.response_mask)
    proxy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = exact_grad_norms(model, batch.input_ids, batch.attention_mask, batch.targets, batch.response_mask)
    exact_s = time.perf_counter() - t0
    accepted = batch.rewards >= 1.0
    pe, pp = prompt_means(exact.detach(), batch.group_ids, accepted), prompt_means(proxy, batch.group_ids, accepted)
    common = sorted(pe)
    n = len(batch.rewards)
    result = {
        "samples": n, "prompts": len(groups), "prompts_with_accepted": len(common),
        "spearman_per_sample": round(spearman(exact.tolist(), proxy.tolist()), 3),
        "spearman_per_prompt_accepted": round(spearman([pe[g] for g in common], [pp[g] for g in common]), 3)
        if len(common) > 2 else None,
        "exact_ms_per_sample": round(1000 * exact_s / n, 3),
        "proxy_ms_per_sample_including_forward": round(1000 * proxy_s / n, 3),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores",
        "command": " ".join(["python"] + sys.argv),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
