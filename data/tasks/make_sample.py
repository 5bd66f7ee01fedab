"""Writes sample.jsonl: a small JSONL task in the format `workbench.tasks.jsonl` reads.

    python data/tasks/make_sample.py

One JSON object per line with "question" and "answer" (and an optional worked "solution").
Answers are checked with math-verify, so "3/4", "0.75" and "\\frac{3}{4}" all match.
"""

import json
import random
from pathlib import Path

rng = random.Random(0)
rows = []
for _ in range(48):  # the shipped model's own format: it can answer these
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    rows.append({"question": f"{a}+{b}=", "answer": str(a + b)})
for _ in range(8):  # word problems and LaTeX answers: a real instruct model's kind of question
    p, q = rng.randint(1, 9), rng.randint(2, 9)
    rows.append(
        {
            "question": f"What is {p}/{q} + 1/{q}? Answer as a fraction.",
            "answer": f"\\frac{{{p + 1}}}{{{q}}}",
            "solution": f"{p}/{q} + 1/{q} = {p + 1}/{q}",
        }
    )
for _ in range(8):
    n = rng.randint(2, 12)
    rows.append({"question": f"A box holds {n} rows of {n + 3} eggs. How many eggs?", "answer": n * (n + 3)})
out = Path(__file__).with_name("sample.jsonl")
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} lines to {out}")
