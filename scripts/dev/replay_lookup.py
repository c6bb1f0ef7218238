#!/usr/bin/env python3
"""Replays the context lookup of `src/decode/lookup.rs` on recorded greedy answers: for each
position of each answer, the longest earlier match of the text's suffix (up to 4 tokens) and how
many tokens a Jacobi pass of n would have added with the copied guesses. Tokens per pass depend
only on the token ids, so this needs no model and no timing.

    fixpoint trajectories --prompts P.jsonl --out t.jsonl --block 16 --max-new 256
    scripts/dev/replay_lookup.py t.jsonl

Reads `trajectories` records (the fixed point of each block is the greedy answer), cuts each
answer after its first end-of-turn token (id 2 in SmolLM2's vocabulary; change EOS for others).
Positions without a match show 1.00 token per pass: the model's own guesses, which the decoder
uses there, need the model and are not replayed.
"""
import collections
import json
import sys

MAX_MATCH = 4
EOS = 2
SIZES = (2, 3, 4, 8, 16)


def answers(path):
    by_prompt = collections.OrderedDict()
    for line in open(path):
        r = json.loads(line)
        by_prompt.setdefault(r["data_id"], []).append(r)
    for records in by_prompt.values():
        prompt = records[0]["prompt_ids"][0]
        answer = [t for r in records for t in r["answer_trajectory_ids"][-1]]
        if EOS in answer:
            answer = answer[: answer.index(EOS) + 1]
        yield prompt, answer


def propose(context, k):
    """The longest suffix seen before and the k tokens after its latest earlier occurrence."""
    length = len(context)
    for n in range(min(MAX_MATCH, length - 1), 0, -1):
        suffix = context[length - n :]
        for start in range(length - n - 1, -1, -1):
            if context[start : start + n] == suffix:
                virtual = list(context)
                for i in range(k):
                    virtual.append(virtual[start + n + i])
                return n, virtual[length:]
    return 0, []


def main(path):
    # tokens[match][n]: tokens added by passes of n at positions whose longest match is `match`.
    tokens = collections.defaultdict(lambda: collections.Counter())
    positions = collections.Counter()
    for prompt, answer in answers(path):
        for i in range(1, len(answer)):
            matched, guesses = propose(prompt + answer[:i], max(SIZES) - 1)
            positions[matched] += 1
            for n in SIZES:
                right = 0
                while right < min(n - 1, len(guesses)) and i + right < len(answer) and guesses[right] == answer[i + right]:
                    right += 1
                tokens[matched][n] += 1 + right
    total = sum(positions.values())
    print("| longest match | share of positions | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    for matched in sorted(positions):
        cells = " | ".join(f"{tokens[matched][n] / positions[matched]:.2f}" for n in SIZES)
        print(f"| {matched} | {positions[matched] / total:.0%} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1])
