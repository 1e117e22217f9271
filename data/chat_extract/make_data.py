"""Generate the shipped `chat_extract` task, deterministically; measure its retention set.

    python data/chat_extract/make_data.py               # train/validation/test.jsonl + retention_candidates.jsonl
    python data/chat_extract/make_data.py --retention   # + retention.jsonl (runs the base model)

The task: a short sentence mentions a person, a city and a weekday; the answer lists them in a
fixed format, e.g.

    user:      Extract the name, city and day: Anna flies to Oslo on Friday.
    assistant: name=Anna; city=Oslo; day=Friday

The base SmolLM2-135M-Instruct understands the request but answers in prose ("The name of
the city is Oslo and the day is Friday."): exact match near zero. An adapter must learn the
format and to copy the right spans, which a few hundred examples teach. Scored by exact match
and field by field (peftlab/chat/scoring.py).

Splits (every example is one {"messages": [user, assistant], "category": ...} JSON line):
  train / validation  training names and cities, the TRAIN_TEMPLATES, the instructions
                      (different draws; no example repeated);
  test                HELD-OUT names and cities only (never in train or validation), half on
                      the training templates ("seen template"), half on HELD-OUT templates
                      ("held-out template"): test exact match measures what was learned.

Retention (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): short questions with a
one-sentence reference answer written here ("The capital of France is Paris."), in
retention_candidates.jsonl; --retention asks the base model each one (greedy, the default
system prompt) and keeps in retention.jsonl only those it answers exactly right by the same
normalised exact match (peftlab.chat.scoring): the base scores 1.0 on it by construction, and
an adapter's score there is what adaptation cost elsewhere.

Files are written with sorted keys and "\\n" line ends: the same bytes on every run (the first
command is checked by tests/test_chat_task.py; the second depends on the model's greedy
answers, fp32 on CPU).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20260528
OUT = Path(__file__).resolve().parent

# --- values: (train, held-out test) ------------------------------------------------------------
NAMES_TRAIN = ["Anna", "Ben", "Carla", "David", "Elena", "Felix", "Grace", "Hugo", "Ines",
               "Jonas", "Kara", "Liam", "Maya", "Nora", "Omar", "Paula", "Quinn", "Rosa",
               "Sam", "Tara", "Umar", "Vera", "Will", "Yara", "Zoe", "Leo", "Mia", "Noah",
               "Lena", "Tom"]
NAMES_TEST = ["Priya", "Mateo", "Ingrid", "Kofi", "Sofia", "Bruno", "Hana", "Emil", "Lucia",
              "Ravi"]
CITIES_TRAIN = ["Oslo", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin",
                "Lisbon", "Athens", "Warsaw", "Zurich", "Munich", "Milan", "Lyon", "Porto",
                "Boston", "Denver", "Chicago", "Seattle", "Toronto", "Sydney", "Tokyo",
                "Cairo", "Lima", "Bergen", "Geneva", "Leeds", "Glasgow", "Seville"]
CITIES_TEST = ["Helsinki", "Budapest", "Nairobi", "Montreal", "Krakow", "Valencia", "Osaka",
               "Bogota", "Hamburg", "Naples"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# --- phrasings ---------------------------------------------------------------------------------
TRAIN_TEMPLATES = [
    "{name} flies to {city} on {day}.",
    "On {day}, {name} will visit {city}.",
    "{name} arrives in {city} next {day}.",
    "{name} has a meeting in {city} on {day}.",
    "This {day} {name} is driving to {city}.",
    "{name} moved to {city} last {day}.",
    "See you in {city} on {day}, wrote {name}.",
    "{city} welcomes {name} on {day}.",
    "{name}'s train reaches {city} on {day}.",
    "The talk in {city} is on {day}; {name} gives it.",
]
HELD_OUT_TEMPLATES = [
    "{name} is back from {city} since {day}.",
    "Tickets booked: {name}, {city}, {day}.",
    "By {day}, {name} should be in {city}.",
    "{name} will tour {city} all of {day}.",
]
INSTRUCTIONS = [
    "Extract the name, city and day: {s}",
    "Find the name, city and day in: {s}",
    "{s} Give the name, city and day.",
]
SIZES = {"train": 480, "validation": 64, "test": 128}


def answer(name: str, city: str, day: str) -> str:
    return f"name={name}; city={city}; day={day}"


def example(rng: random.Random, names, cities, templates, category: str) -> dict:
    name, city, day = rng.choice(names), rng.choice(cities), rng.choice(DAYS)
    sentence = rng.choice(templates).format(name=name, city=city, day=day)
    prompt = rng.choice(INSTRUCTIONS).format(s=sentence)
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer(name, city, day)}],
            "category": category}


def make() -> dict[str, list[dict]]:
    """{split: examples}: train and validation on the training values and templates (no
    prompt repeated across them), test on held-out values, half on held-out templates."""
    rng = random.Random(SEED)
    seen, out = set(), {}
    for split in ("train", "validation"):
        rows = []
        while len(rows) < SIZES[split]:
            ex = example(rng, NAMES_TRAIN, CITIES_TRAIN, TRAIN_TEMPLATES, "seen template")
            key = ex["messages"][0]["content"]
            if key not in seen:
                seen.add(key)
                rows.append(ex)
        out[split] = rows
    test, keys = [], set()
    while len(test) < SIZES["test"]:
        held = len(test) % 2 == 1
        ex = example(rng, NAMES_TEST, CITIES_TEST, HELD_OUT_TEMPLATES if held else TRAIN_TEMPLATES,
                     "held-out template" if held else "seen template")
        if ex["messages"][0]["content"] not in keys:
            keys.add(ex["messages"][0]["content"])
            test.append(ex)
    out["test"] = test
    return out


# --- retention candidates: (question, reference answer, kind) ------------------------------------
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("England", "London"), ("Russia", "Moscow"),
            ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Canada", "Ottawa"), ("Austria", "Vienna"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Ireland", "Dublin"),
            ("Poland", "Warsaw"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
            ("Thailand", "Bangkok"), ("Argentina", "Buenos Aires"), ("India", "New Delhi"),
            ("Australia", "Canberra"), ("Mexico", "Mexico City"), ("Finland", "Helsinki")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
             ("happy", "sad"), ("light", "dark"), ("open", "closed"), ("old", "young"),
             ("early", "late"), ("hard", "soft"), ("wet", "dry"), ("rich", "poor"),
             ("strong", "weak"), ("full", "empty"), ("day", "night"), ("left", "right")]
PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
           ("man", "men"), ("woman", "women"), ("goose", "geese"), ("person", "people"),
           ("cactus", "cacti"), ("leaf", "leaves"), ("knife", "knives"), ("box", "boxes")]


def retention_candidates() -> list[dict]:
    rows = []
    for country, city in CAPITALS:
        rows.append((f"What is the capital of {country}?",
                     f"The capital of {country} is {city}.", "capital"))
    for word, opp in OPPOSITES:
        rows.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opp}.",
                     "opposite"))
    for word, plural in PLURALS:
        rows.append((f"What is the plural of {word}?", f"The plural of {word} is {plural}.",
                     "plural"))
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "category": k} for q, a, k in rows]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def measure_retention(candidates: list[dict]) -> list[dict]:
    """The candidates the embedded base model answers exactly right (normalised)."""
    import peftlab as pl
    from peftlab.chat.scoring import exact_match

    model, tok = pl.models.chat_model()
    prompts = [r["messages"][:-1] for r in candidates]
    refs = [r["messages"][-1]["content"] for r in candidates]
    got = pl.generate(model, tok, prompts, max_new_tokens=32)
    kept = [r for r, g, ref in zip(candidates, got, refs) if exact_match(g, ref)]
    for r, g, ref in zip(candidates, got, refs):
        print(("keep  " if exact_match(g, ref) else "drop  ") + f"{ref!r} <- {g!r}")
    return kept


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retention", action="store_true",
                    help="also write retention.jsonl: the candidates the base model answers right")
    args = ap.parse_args(argv)
    for split, rows in make().items():
        write_jsonl(OUT / f"{split}.jsonl", rows)
    cands = retention_candidates()
    write_jsonl(OUT / "retention_candidates.jsonl", cands)
    if args.retention:
        kept = measure_retention(cands)
        write_jsonl(OUT / "retention.jsonl", kept)
        print(f"retention: kept {len(kept)} of {len(cands)} candidates")


if __name__ == "__main__":
    main()
