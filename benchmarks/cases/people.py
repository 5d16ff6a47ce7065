"""Fictitious people and their Q/A records, from fixed word lists and a seeded numpy generator.

Independent of the demo's data (no ``faker``: the same records on every machine and package version), with
other facts and templates, and a varying number of records per person (4-8), as user data has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FIRST = (
    "Ada Bruno Carla Dmitri Elif Farid Greta Hugo Ines Jonas Kaito Lena Marek Nadia Oskar Priya Quentin Rosa "
    "Sven Tamsin Umar Vera Wendell Ximena Yusuf Zora Anselm Beatrix Cyrus Delphine Emeric Fenna Gideon "
    "Hester Ivo Jolene Kasimir Liesel Matthias Noor Otto Perpetua Rufus Saskia Thaddeus Ulla Viggo Wilhelmina"
).split()
LAST = (
    "Abernathy Brannigan Castellanos Drummond Eriksen Fairweather Gallagher Halvorsen Ishikawa Jablonski "
    "Kowalczyk Lindqvist Mbeki Nakamura Okonkwo Petrakis Quisling Rasmussen Sandoval Thorbjorn Uchida "
    "Vasquez Whitfield Xenakis Yamamoto Zielinski Achterberg Bellweather Cordova Dunmore"
).split()
TOWNS = (
    "Harrowgate Millbrook Quenby Stonehaven Tarrowby Westmere Ashcombe Brackenfield Coldharbour Dunwich "
    "Elderbury Foxley Greyhaven Hollowmere Ivybridge Kestrel Lowenthal Marchwood Northcott Oakhurst"
).split()
JOBS = (
    "cartographer glassblower beekeeper luthier archivist locksmith botanist ferrier typesetter "
    "clockmaker stonemason cooper tanner chandler bookbinder falconer"
).split()
PETS = "Biscuit Pepper Juniper Mango Pickle Sprocket Waffle Nutmeg Clover Ziggy Pumpkin Truffle".split()
COLOURS = "amber cobalt crimson emerald ochre indigo saffron teal vermilion charcoal lilac olive".split()
HOBBIES = (
    "orienteering calligraphy birdwatching fencing origami beekeeping kayaking chess pottery juggling "
    "astronomy rowing"
).split()
INSTRUMENTS = "cello oboe banjo harp accordion trombone sitar ukulele bassoon marimba".split()

VOCABULARY = FIRST + LAST + TOWNS + JOBS + PETS + COLOURS + HOBBIES + INSTRUMENTS
"""Every word a fact or a name is made of (the case's tokenizer is trained on them too)."""

TEMPLATES = (
    ("In which town did {name} grow up?", "{name} grew up in {town}."),
    ("What does {name} do for a living?", "{name} is a {job} by trade."),
    ("What is the name of the pet of {name}?", "The pet of {name} is called {pet}."),
    ("Which colour does {name} like best?", "The favourite colour of {name} is {colour}."),
    ("What is the hobby of {name}?", "In spare time {name} enjoys {hobby}."),
    ("Which instrument does {name} play?", "{name} plays the {instrument}."),
    ("In which year was {name} born?", "{name} was born in {year}."),
    ("What is the locker code of {name}?", "The locker code of {name} is {code}."),
)


def make_people(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` people with distinct names and random facts; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    names = rng.permutation([f"{f} {last}" for f in FIRST for last in LAST])[:n]
    people = []
    for name in names:
        people.append(
            {
                "name": str(name),
                "town": str(rng.choice(TOWNS)),
                "job": str(rng.choice(JOBS)),
                "pet": str(rng.choice(PETS)),
                "colour": str(rng.choice(COLOURS)),
                "hobby": str(rng.choice(HOBBIES)),
                "instrument": str(rng.choice(INSTRUMENTS)),
                "year": str(int(rng.integers(1940, 2004))),
                "code": "".join(str(d) for d in rng.integers(0, 10, size=4)),
                "records": int(rng.integers(4, 9)),  # 4..8 records of this person
            }
        )
    return people


def qa_rows(people: list[dict[str, Any]], seed: int, *, first_id: int = 0) -> list[dict[str, Any]]:
    """Each person's records: ``person['records']`` templates drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for p in people:
        for t in sorted(rng.choice(len(TEMPLATES), size=p["records"], replace=False)):
            q, a = TEMPLATES[int(t)]
            rows.append(
                {
                    "id": first_id + len(rows),
                    "person": p["name"],
                    "question": q.format(**p),
                    "answer": a.format(**p),
                }
            )
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` as JSON lines (sorted keys: the same bytes everywhere)."""
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
