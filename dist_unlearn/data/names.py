"""Fictitious people from word lists the package owns and numpy's seeded generator.

The demo's inputs must be the same on every machine: a generator from another package (its word lists,
its random calls) changes between versions, so the demo's people, its model and its numbers would too.
Here the lists are fixed in this file and every draw is ``numpy.random.Generator.integers`` on a
``default_rng(seed)`` (PCG64), whose integer stream numpy keeps stable.
"""

from __future__ import annotations

import numpy as np

FIRST_NAMES = """
Aaron Abigail Adrian Alice Amanda Amber Andrea Angela Anita Arthur Barbara Benjamin Bernard Beth Brandon
Brenda Bruno Caleb Camila Carl Carmen Caroline Cecilia Charles Chloe Clara Colin Daniel Daphne David Debra
Diana Dominic Doris Edgar Edith Eleanor Elias Elena Emil Emma Eric Esther Eva Felix Fiona Frances Frank
Gabriel Gemma George Gloria Grace Gregory Hannah Harold Hazel Hector Helen Henry Hugo Ian Ida Irene Isaac
Ivan Jack Jacob Jane Jasper Jean Joan Jonah Jordan Joseph Joyce Julia Justin Karen Keith Laura Leon Lily
Linda Lucas Lydia Marcus Margaret Maria Martin Maya Miles Miriam Nadia Naomi Nathan Nina Noah Norma Oliver
Olivia Oscar Pamela Patrick Paula Peter Philip Priya Quentin Rachel Ralph Rebecca Rita Robert Rosa Ruth
Samuel Sandra Sara Sean Simon Sofia Stella Susan Theo Thomas Tina Tobias Ursula Victor Vera Walter Wendy
Xavier Yara Yusuf Zoe
""".split()

LAST_NAMES = """
Abbott Acosta Adler Alvarez Ambrose Andersen Archer Arnold Bailey Baker Barnes Becker Bell Bishop Blake
Bowen Brandt Brooks Burke Caldwell Campbell Carter Castillo Chandler Chen Clarke Cole Collins Conway Cooper
Cruz Dalton Davies Delgado Dixon Doyle Duncan Eaton Ellis Engel Evans Farrell Fischer Fleming Ford Foster
Fraser Garcia Gibson Graham Grant Gray Hale Hansen Harper Hayes Hoffman Holt Hughes Ingram Jansen Jensen
Keller Kemp Kerr Khan Klein Lambert Lang Larsen Lawson Lindqvist Lopez Lowe Mackay Marsh Meyer Miller Moreno
Morgan Murphy Nash Navarro Nielsen Novak Olsen Ortega Owens Palmer Parker Pearce Perry Quinn Ramos Reed
Reyes Richter Rivera Rowe Russo Santos Schmidt Shaw Silva Sinclair Snyder Stone Sullivan Tanaka Thornton
Torres Turner Vance Vargas Vogel Wagner Walsh Ward Weber Wells Whitaker Wolfe Young Zavala Zimmer
""".split()

CITIES = """
Aberdeen Albany Alicante Amiens Ancona Antwerp Arlington Asheville Aurora Bergen Berkeley Bilbao Bologna
Boulder Bremen Brighton Bristol Bruges Burlington Calgary Cambridge Cardiff Charleston Cork Dayton Dijon
Dresden Dublin Dundee Durham Eindhoven Erfurt Eugene Fresno Galway Geneva Genoa Ghent Glasgow Granada
Graz Halifax Hamilton Hanover Helena Innsbruck Ithaca Kingston Leeds Leiden Lille Linz Lisbon Lyon Madison
Malaga Mannheim Memphis Modena Montpellier Nantes Naples Newport Norwich Oakland Odense Orlando Oslo Oxford
Padua Palermo Parma Perth Porto Portland Quebec Raleigh Reno Rennes Richmond Rotterdam Salem Salzburg
Savannah Seville Sheffield Spokane Tampa Toledo Toulouse Trieste Tucson Turin Uppsala Utrecht Valencia
Verona Victoria Windsor Winnipeg York Zurich
""".split()

JOBS = [
    "accountant", "architect", "baker", "biologist", "bookkeeper", "carpenter", "chemist", "chef",
    "civil engineer", "dentist", "designer", "electrician", "editor", "economist", "farmer", "firefighter",
    "geologist", "gardener", "historian", "illustrator", "interpreter", "journalist", "judge", "librarian",
    "lawyer", "machinist", "mechanic", "midwife", "musician", "nurse", "optician", "painter", "paramedic",
    "pharmacist", "photographer", "physicist", "pilot", "plumber", "potter", "programmer", "surveyor",
    "surgeon", "tailor", "teacher", "translator", "veterinarian", "welder", "zoologist",
]  # fmt: skip

COMPANY_WORDS = """
Amber Apex Arbor Atlas Beacon Birch Bright Cedar Clear Cobalt Coral Crest Delta Ember Falcon Fern Granite
Harbor Helix Iris Juniper Keystone Lark Linden Lumen Maple Meridian Nimbus Oak Onyx Orchid Pine Prism
Quarry Raven Ridge River Sable Sierra Silver Solstice Spruce Summit Tidal Vertex Willow Zenith
""".split()
COMPANY_KINDS = ["Labs", "Group", "Works", "Systems", "Partners", "Foods", "Logistics", "Studio", "Press"]
EMAIL_DOMAINS = ["mail.example", "post.example", "inbox.example", "letters.example"]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]  # fmt: skip
DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def make_people(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` fictitious people with distinct names, the same for a given ``seed`` on every machine.

    Each has ``name``, ``city``, ``job``, ``birthday`` (e.g. "07 March 1961"), ``company``, ``phone``
    (###-###-####) and ``email``.

    Raises:
        ValueError: more people than distinct names (``len(FIRST_NAMES) * len(LAST_NAMES)``).
    """
    if n > len(FIRST_NAMES) * len(LAST_NAMES):
        raise ValueError(f"{n} people but only {len(FIRST_NAMES) * len(LAST_NAMES)} distinct names.")
    rng = np.random.default_rng(seed)
    people: list[dict[str, str]] = []
    names: set[str] = set()
    while len(people) < n:
        first, last = _pick(rng, FIRST_NAMES), _pick(rng, LAST_NAMES)
        name = f"{first} {last}"
        if name in names:
            continue
        names.add(name)
        month = int(rng.integers(12))
        day = int(rng.integers(1, DAYS_IN_MONTH[month] + 1))
        year = int(rng.integers(1945, 2005))
        digits = "".join(str(int(d)) for d in rng.integers(0, 10, size=10))
        handle = f"{first.lower()}.{last.lower()}{int(rng.integers(1, 100))}"
        people.append(
            {
                "name": name,
                "city": _pick(rng, CITIES),
                "job": _pick(rng, JOBS),
                "birthday": f"{day:02d} {MONTHS[month]} {year}",
                "company": f"{_pick(rng, COMPANY_WORDS)} {_pick(rng, COMPANY_KINDS)}",
                "phone": f"{digits[:3]}-{digits[3:6]}-{digits[6:]}",
                "email": f"{handle}@{_pick(rng, EMAIL_DOMAINS)}",
            }
        )
    return people
