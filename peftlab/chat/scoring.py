"""Scoring generated answers: exact match, and field by field for structured answers.

    pl.chat.scoring.exact_match("name=Anna; city=Oslo.", "name=Anna; city=Oslo")   # True
    pl.chat.scoring.fields("name=Anna; city=Oslo; day=Friday")   # {"name": "Anna", ...}
    pl.chat.scoring.score_answers(generated, references)          # {"exact_match", "fields", ...}
    pl.chat.scoring.evaluate(model, tokenizer, split)              # generate, then score

Exact match compares the answers after normalising what a reader would not count as a
difference: case, runs of whitespace, and one trailing full stop. A structured answer
("key=value; key=value", the shipped chat_extract task) is also scored per field: for each
key of the reference, the share of answers whose value for that key is exactly the
reference's (normalised); an answer in prose has no fields and scores 0 on each. That tells
"the format is learned but the city is wrong" apart from "nothing is learned".
"""

from __future__ import annotations

import re

FIELD_SEP, KEY_SEP = ";", "="


def normalize(text: str) -> str:
    """Lower case, whitespace collapsed, one trailing '.' dropped: 'The Sky is  blue.' ->
    'the sky is blue'."""
    text = " ".join(str(text).split()).casefold()
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(generated: str, reference: str) -> bool:
    """True when the two answers are equal after normalize()."""
    return normalize(generated) == normalize(reference)


_FIELD = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*" + KEY_SEP + r"\s*(.*?)\s*$")


def fields(text: str) -> dict[str, str]:
    """{key: value} of a 'key=value; key=value' answer (keys lower-cased, values normalised);
    parts that are not key=value are ignored, so prose gives {}."""
    out = {}
    for part in str(text).split(FIELD_SEP):
        m = _FIELD.match(part)
        if m:
            out.setdefault(m.group(1).strip().casefold(), normalize(m.group(2)))
    return out


def score_answers(generated: list[str], references: list[str],
                  categories: list[str] | None = None) -> dict:
    """{"exact_match", "n", "fields": {key: accuracy} (keys of the references; {} when the
    references have none), "field_accuracy" (the mean over keys, None without fields),
    "categories": {category: (exact match, n)}} of generated answers against references."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated answers for {len(references)} "
                         f"references: give one answer per reference.")
    if not references:
        raise ValueError("Nothing to score: no references.")
    hits = [exact_match(g, r) for g, r in zip(generated, references)]
    ref_fields = [fields(r) for r in references]
    got_fields = [fields(g) for g in generated]
    keys = list(dict.fromkeys(k for f in ref_fields for k in f))
    per = {}
    for k in keys:
        pairs = [(got.get(k), ref[k]) for got, ref in zip(got_fields, ref_fields) if k in ref]
        per[k] = sum(g == r for g, r in pairs) / len(pairs)
    cats = {}
    if categories is not None:
        if len(categories) != len(references):
            raise ValueError(f"{len(categories)} categories for {len(references)} references.")
        for c in dict.fromkeys(categories):
            h = [x for x, k in zip(hits, categories) if k == c]
            cats[c] = (sum(h) / len(h), len(h))
    return {"exact_match": sum(hits) / len(hits), "n": len(hits), "fields": per,
            "field_accuracy": sum(per.values()) / len(per) if per else None,
            "categories": cats}


def references(split) -> tuple[list, list[str]]:
    """(prompts: each conversation without its last message, references: that message) of a
    ChatSplit; a conversation not ending in an assistant answer is refused."""
    from peftlab.data.template import ChatDataError, as_messages

    prompts, refs = [], []
    for i, c in enumerate(split.conversations):
        msgs = as_messages(c, f"{split.name} example {i}")
        if msgs[-1]["role"] != "assistant":
            raise ChatDataError(f"{split.name} example {i}: the last message is not an "
                                f"assistant answer, so there is nothing to score; end each "
                                f"conversation with the expected answer.")
        prompts.append(msgs[:-1])
        refs.append(msgs[-1]["content"])
    return prompts, refs


def evaluate(model, tokenizer, split, *, max_new_tokens: int | None = None,
             batch_size: int = 16, categories: list[str] | None = None,
             examples: int = 5) -> dict:
    """Greedy answers to every conversation of a ChatSplit, scored by score_answers, plus
    "generate_s" (the wall time of generation) and the first `examples` (prompt, reference,
    generated). max_new_tokens: default the longest reference + 8 tokens."""
    import time

    from peftlab.chat.generate import generate

    prompts, refs = references(split)
    template = split.template(tokenizer)
    if max_new_tokens is None:
        max_new_tokens = max(len(template.ids(r)) for r in refs) + 8
    t0 = time.perf_counter()
    got = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, template=template)
    out = score_answers(got, refs, categories)
    out["generate_s"] = time.perf_counter() - t0
    out["examples"] = [{"prompt": p[-1]["content"], "reference": r, "generated": g}
                       for p, r, g in list(zip(prompts, refs, got))[:examples]]
    out["generated"] = got
    return out
