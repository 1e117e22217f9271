"""Generate the shipped `sentiment_contrast` dataset, deterministically.

Run from the repository root:  python data/make_sentiment_contrast.py
It rewrites data/sentiment_contrast/{train,validation,test}.csv byte for byte the same
on every run (fixed seed, sorted vocabularies, no hash-order dependence). Columns: text,
label, category (the sentence's construction, see the templates below; the category column
was added later without changing any sentence, label or split).

Why this task: a sentence's sentiment is decided by *structure*, not by which words it
contains. "The soup was not great" and "I expected the soup to be bland, but it was great"
contain the same kind of words as their opposites. Frozen, mean-pooled sentence embeddings
blur that structure (a linear probe on them does poorly), while fine-tuning the encoder
learns it. That gap is what the course needs to show what each PEFT method buys.

Splits:
  train       the train vocabulary and the 12 train templates;
  validation  built like the test split but disjoint from it and from train: its own held-out
              nouns and adjectives, half on the train templates and half on 4 held-out
              templates of its own (issue 31). So choosing settings on validation measures the
              same kind of generalisation the test split measures, without touching test;
  test        HELD-OUT nouns and adjectives, half on the train templates and half on 4
              held-out templates (paraphrases of the training constructions), so memorising
              surface forms does not pass.

Until issue 31 the validation split shared the train vocabulary and templates. Every setting
that fitted training scored 1.0 on it, so it could not choose between settings. The train and
test files are byte for byte what they were: the old validation draw is still made (and thrown
away) so the random stream that draws test is unchanged, and the new validation split is drawn
from its own seed, VALIDATION_SEED.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SEED = 20261128
VALIDATION_SEED = 20261207
OUT = Path(__file__).resolve().parent / "sentiment_contrast"

# --- vocabulary: (train, held-out test) --------------------------------------------------
POS_ADJ_TRAIN = [
    "good", "great", "excellent", "wonderful", "delightful", "superb", "pleasant", "lovely",
    "fantastic", "enjoyable", "charming", "impressive", "brilliant", "satisfying", "amazing",
    "friendly", "fresh", "beautiful", "perfect", "solid",
]
NEG_ADJ_TRAIN = [
    "bad", "terrible", "awful", "horrible", "disappointing", "dreadful", "boring", "poor",
    "unpleasant", "mediocre", "rude", "bland", "dull", "annoying", "sloppy", "stale",
    "ugly", "painful", "weak", "miserable",
]
POS_ADJ_TEST = ["outstanding", "marvelous", "terrific", "splendid", "magnificent", "fabulous",
                "gorgeous", "stellar"]
NEG_ADJ_TEST = ["atrocious", "abysmal", "lousy", "dismal", "pathetic", "appalling",
                "tedious", "shoddy"]
NOUN_TRAIN = [
    "food", "service", "movie", "book", "hotel", "room", "staff", "concert", "show", "game",
    "coffee", "pizza", "phone", "camera", "trip", "class", "lecture", "album", "car", "bed",
    "waiter", "soup", "plot", "ending", "music", "flight", "app", "laptop", "museum", "park",
]
NOUN_TEST = ["stadium", "sandwich", "documentary", "guide", "festival", "novel", "bakery",
             "train ride", "tour", "seminar"]
# validation's own held-out words: in neither train nor test
POS_ADJ_VAL = ["exceptional", "glorious", "remarkable", "sublime", "phenomenal", "exquisite",
               "dazzling", "heavenly"]
NEG_ADJ_VAL = ["horrendous", "dreary", "wretched", "subpar", "frustrating", "unbearable",
               "awkward", "gloomy"]
NOUN_VAL = ["restaurant", "podcast", "theater", "lesson", "hostel", "cafe", "exhibition",
            "workshop", "ferry", "playlist"]

# --- templates: (text pattern, how the label follows from the adjectives, construction) ---
# {n}, {m}: nouns; {a}: the adjective that decides; {b}: a distractor of the OTHER polarity.
# kind "same": label = polarity of {a};  kind "flip": label = opposite of polarity of {a}.
# construction (the `category` column): "plain" (the adjective decides as it stands),
# "negation" (a negated adjective), "contrast" (a distractor clause, then the deciding one),
# "expectation reversal" (an expectation or hearsay, then what it really was). A sentence
# from a held-out template gets " (held-out template)" after its construction.
TRAIN_TEMPLATES = [
    ("the {n} was {a}.", "same", "plain"),
    ("the {n} was {a} and the {m} was too.", "same", "plain"),
    ("the {n} was not {a}.", "flip", "negation"),
    ("the {n} was not {a} at all.", "flip", "negation"),
    ("i did not think the {n} was {a}.", "flip", "negation"),
    ("the {n} was never {a}.", "flip", "negation"),
    ("the {n} was {b}, but the {m} was {a}.", "same", "contrast"),
    ("i expected the {n} to be {b}, but it was {a}.", "same", "expectation reversal"),
    ("although the {n} was {b}, the {m} was {a}.", "same", "contrast"),
    ("the {n} was {b} at first, but in the end it was {a}.", "same", "contrast"),
    ("the {n} was not {b}, it was {a}.", "same", "contrast"),
    ("people say the {n} is {b}, but it is actually {a}.", "same", "expectation reversal"),
]
TEST_TEMPLATES = TRAIN_TEMPLATES + [
    ("honestly, the {n} was not {a}.", "flip", "negation"),
    ("i would not call the {n} {a}.", "flip", "negation"),
    ("the {n} seemed {b}, yet it turned out {a}.", "same", "expectation reversal"),
    ("despite a {b} {m}, the {n} was {a}.", "same", "contrast"),
]
HELD_OUT_TEMPLATES = TEST_TEMPLATES[len(TRAIN_TEMPLATES):]
# validation's own held-out templates: other paraphrases of the same constructions, none of
# them a test template
VALIDATION_HELD_OUT_TEMPLATES = [
    ("the {n} was hardly {a}.", "flip", "negation"),
    ("nobody would say the {n} was {a}.", "flip", "negation"),
    ("the {n} looked {b}, but it proved {a}.", "same", "expectation reversal"),
    ("the {m} was {b}; even so, the {n} was {a}.", "same", "contrast"),
]

SIZES = {"train": 2400, "validation": 400, "test": 800}


def _sentence(rng: random.Random, template: str, kind: str, pos: list[str], neg: list[str],
              nouns: list[str]) -> tuple[str, int]:
    label = rng.randint(0, 1)  # 1 = positive sentiment overall
    # the deciding adjective: its polarity equals the label for "same", the opposite for "flip"
    a_positive = (label == 1) if kind == "same" else (label == 0)
    a = rng.choice(pos if a_positive else neg)
    b = rng.choice(neg if a_positive else pos)
    n, m = rng.sample(nouns, 2)
    text = template.format(n=n, m=m, a=a, b=b)
    text = text[0].upper() + text[1:]
    return text, label


HELD_OUT = " (held-out template)"
CATEGORIES = ["plain", "negation", "contrast", "expectation reversal"]


def make_split(name: str, rng: random.Random, exclude: set[str] = frozenset(),
               old_validation: bool = False) -> list[tuple[str, int, str]]:
    """old_validation: the pre-issue-31 validation draw (train words and templates), made only
    to advance `rng` exactly as before so that the test draw after it is unchanged."""
    if name == "test":
        pos, neg, nouns = POS_ADJ_TEST, NEG_ADJ_TEST, NOUN_TEST
        # half of the test set on held-out templates, half on the training templates
        templates = [HELD_OUT_TEMPLATES, TRAIN_TEMPLATES]
    elif name == "validation" and not old_validation:
        pos, neg, nouns = POS_ADJ_VAL, NEG_ADJ_VAL, NOUN_VAL
        templates = [VALIDATION_HELD_OUT_TEMPLATES, TRAIN_TEMPLATES]
    else:
        pos, neg, nouns = POS_ADJ_TRAIN, NEG_ADJ_TRAIN, NOUN_TRAIN
        templates = [TRAIN_TEMPLATES]
    rows: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    while len(rows) < SIZES[name]:
        group = templates[len(rows) % len(templates)]
        template, kind, construction = rng.choice(group)
        text, label = _sentence(rng, template, kind, pos, neg, nouns)
        if text in seen or text in exclude:
            continue
        seen.add(text)
        held_out = group is not TRAIN_TEMPLATES
        rows.append((text, label, construction + (HELD_OUT if held_out else "")))
    return rows


def main() -> None:
    rng = random.Random(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    splits = {"train": make_split("train", rng)}
    make_split("validation", rng, {t for t, _, _ in splits["train"]}, old_validation=True)
    splits["test"] = make_split("test", rng)
    splits["validation"] = make_split("validation", random.Random(VALIDATION_SEED))
    splits = {k: splits[k] for k in ("train", "validation", "test")}
    for name, rows in splits.items():
        with open(OUT / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label", "category"])
            w.writerows(rows)
        n_pos = sum(label for _, label, _ in rows)
        print(f"{name:<11} {len(rows):5d} rows, {n_pos / len(rows):.1%} positive")


if __name__ == "__main__":
    main()
