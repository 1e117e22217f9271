"""Write topics.csv and topics_test.csv: short sentences about food, sport or tech.

The example dataset of the README's "Your own data" section: string labels in a column named
`topic`, texts in a column named `sentence` (not peftlab's default names), so the commands
there show --text-column / --label-column. The test file uses subjects the training file
never shows. Deterministic: run it again and the files are byte for byte the same.

    python data/examples/make_topics.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# subject words per topic: the first ones for training, the last two held out for the test file
SUBJECTS = {
    "food": ["the soup", "this bakery", "the pasta", "our curry", "the salad", "that pizza",
             "the dessert", "the noodles", "the omelette", "the stew"],
    "sport": ["the team", "the striker", "the coach", "the match", "the race", "the keeper",
              "the final", "the relay", "the goalkeeper", "the marathon"],
    "tech": ["the new phone", "this laptop", "the app", "the update", "the tablet",
             "the router", "the software", "the charger", "the smartwatch", "the printer"],
}
PREDICATES = ["was {a}", "looked {a} today", "felt {a} to me", "is {a} this year",
              "turned out {a}"]
ADJECTIVES = ["great", "terrible", "quick", "slow", "fine", "odd", "lovely", "awful", "decent",
              "bold"]


def make(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(seed)
    train, test = [], []
    for topic, subjects in SUBJECTS.items():
        for i, subject in enumerate(subjects):
            pairs = rng.sample([(p, a) for p in PREDICATES for a in ADJECTIVES], 6)
            rows = [(f"{subject} {p.format(a=a)}", topic) for p, a in pairs]
            if i >= len(subjects) - 2:
                test.extend(rows[:3])
            else:
                train.extend(rows)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write(path: Path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sentence", "topic"])
        w.writerows(rows)


if __name__ == "__main__":
    train, test = make()
    write(HERE / "topics.csv", train)
    write(HERE / "topics_test.csv", test)
    print(f"wrote {len(train)} + {len(test)} rows to {HERE}")
