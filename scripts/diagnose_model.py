#!/usr/bin/env python3
"""Where does a model's success on the addition task come from? Greedy and sampled (T = 1, 8 samples) success
by operand-length class, on the held-out problems and on problems of the training stream, plus where greedy
answers go wrong (which digit). This is what showed that a warm start memorised the frequent training problems
(docs/algorithms.md, "Why training reward rose while held-out success did not").

    python scripts/diagnose_model.py .cache/tiny-model [--operands digits] [--held-out 1000]
"""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--operands", default="uniform", choices=("uniform", "digits"))
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--train-problems", type=int, default=1000)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewards.builtin import exact_answer
    from rollout.tasks.addition import AdditionTask

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    task = AdditionTask(seed=1000, held_out_size=args.held_out, operands=args.operands)

    @torch.no_grad()
    def answers(prompts, sample: bool, n: int = 1) -> list[list[str]]:
        enc = tok([p.text for p in prompts], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=task.max_answer_chars() + 1, do_sample=sample, temperature=1.0,
                             num_return_sequences=n, pad_token_id=0, eos_token_id=0)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    report = {}
    for name, prompts in (("held_out", task.held_out()), ("training_stream", task.next(args.train_problems))):
        greedy = [a[0] for a in answers(prompts, False)]
        sampled = answers(prompts, True, 8)
        by_class, errors = collections.defaultdict(lambda: [0, 0.0, 0.0]), collections.Counter()
        for p, g, s in zip(prompts, greedy, sampled):
            row = by_class["+".join(f"{len(x)}d" for x in p.prompt_id.split("+"))]
            row[0] += 1
            row[1] += exact_answer(p.text, g, **p.fields)
            row[2] += sum(exact_answer(p.text, x, **p.fields) for x in s) / len(s)
            want = p.fields["answer"]
            errors["ok" if g == want else "length" if len(g) != len(want) else
                   "wrong digit(s) " + ",".join(str(i) for i in range(len(want)) if g[i] != want[i])] += 1
        report[name] = {"classes": {k: {"n": n, "greedy": round(a / n, 3), "sampled": round(b / n, 3)}
                                    for k, (n, a, b) in sorted(by_class.items())},
                        "greedy_answers": dict(errors.most_common())}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
