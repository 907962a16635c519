"""Seeded generator of the cases of ``bench/updates.py``: updated facts, time-anchored and assistant-detail
questions, each the life of one synthetic user.

* :class:`UpdateCase` — a value stated ("I live in Porto"), filler (some on the same topic: the user's own
  questions about it, the assistant's replies), the value changed ("I moved to Denver"), more filler, then a
  current question ("Where do I live?") and a past one ("Where did I live before Denver?");
* :class:`AnchorCase` — several mentions of the same kind ("I went to the Tate museum ...") on different
  dates, one of them inside the period the question names ("... two months ago"), the others clearly
  outside it; the target dates come from the generator's own offsets, not from :mod:`memory.time_anchor`;
* :class:`DetailCase` — the user asks something, the assistant answers with a detail ("use 3 eggs"), the
  user keeps talking about the topic (questions included), then asks what the assistant said.

Statements use plain phrasings the default pattern extractor reads, so the bench measures retrieval.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from memory.clock import utc

Turn = tuple[str, str, datetime]  # (role, text, at)

CITIES = ("Porto", "Denver", "Lisbon", "Oslo", "Austin", "Lyon", "Krakow", "Seattle", "Valencia", "Dublin",
          "Toronto", "Munich", "Boston", "Nairobi", "Kyoto", "Melbourne", "Bergen", "Quito", "Tallinn", "Ghent")
COMPANIES = ("Acme", "Globex", "Initech", "Hooli", "Umbrella", "Vandelay", "Soylent", "Wonka", "Cyberdyne",
             "Tyrell", "Massive Dynamic", "Oscorp", "Pied Piper", "Aperture", "Gringotts", "Monarch")
FOODS = ("sushi", "tacos", "lasagna", "ramen", "paella", "curry", "pho", "dumplings", "falafel", "risotto",
         "pierogi", "moussaka", "gnocchi", "biryani", "burritos")
COLORS = ("green", "blue", "purple", "orange", "teal", "yellow", "crimson", "navy", "maroon", "turquoise")

# slot: (values, old statements, new statements, current questions, past questions, topic turns (role, text))
SLOTS: dict[str, tuple] = {
    "lives_in": (
        CITIES,
        ("I live in {v}.", "I'm based in {v}.", "I live in {v} with my partner."),
        ("I moved to {v}.", "I just moved to {v} for work.", "I relocated to {v} last month.", "I now live in {v}."),
        ("Where do I live?", "Which city do I live in?", "Where am I living these days?"),
        ("Where did I live before {new}?", "Which city did I live in before {new}?", "Where did I use to live?"),
        (("user", "What is a good neighbourhood to live in for a family?"),
         ("assistant", "Many families like to live near parks, good schools and public transport."),
         ("user", "Is it expensive to live downtown in a big city?"),
         ("assistant", "Living downtown usually costs more, mostly because of rent."),
         ("user", "I love living close to the mountains."),
         ("user", "Do you think I should buy a flat or keep renting where I live?")),
    ),
    "works_at": (
        COMPANIES,
        ("I work at {v}.", "I currently work at {v}."),
        ("I got a new job at {v}.", "I started working at {v}.", "I joined {v} last week."),
        ("Where do I work?", "Which company do I work for?", "Where am I working now?"),
        ("Where did I work before {new}?", "Which company did I work for before {new}?", "Where did I use to work?"),
        (("user", "How do I ask my manager for a raise at work?"),
         ("assistant", "Prepare examples of your results at work and ask for a meeting about pay."),
         ("user", "Work has been really busy this month."),
         ("assistant", "Busy periods at work are a good time to set clear priorities."),
         ("user", "Is it normal to work late every Thursday?"),
         ("user", "My coworkers at work are organising a picnic.")),
    ),
    "favorite_food": (
        FOODS,
        ("My favorite food is {v}.", "My favorite food is {v}, I could eat it every day."),
        ("My favorite food is {v} now.", "I changed my mind, my favorite food is {v}."),
        ("What is my favorite food?", "What's my favourite food?", "Which food is my favorite?"),
        ("What was my favorite food before {new}?", "Which food was my favorite before {new}?",
         "What did I use to say my favorite food was?"),
        (("user", "What food goes well with red wine?"),
         ("assistant", "Rich food like stews, grilled meat and aged cheese goes well with red wine."),
         ("user", "I tried a new food market downtown yesterday."),
         ("user", "Is street food safe to eat when travelling?"),
         ("assistant", "Street food is usually safe where it is cooked fresh and the stall is busy.")),
    ),
    "favorite_color": (
        COLORS,
        ("My favorite color is {v}.", "My favorite color is {v}, it calms me."),
        ("My favorite color is {v} now.",),
        ("What is my favorite color?", "What's my favourite colour?", "Which color do I like best?"),
        ("What was my favorite color before {new}?", "What did I use to say my favorite color was?"),
        (("user", "What color should I paint my bedroom?"),
         ("assistant", "Soft colors like pale blue or sage green make a bedroom feel calm."),
         ("user", "Which color goes with a grey sofa?"),
         ("user", "I bought a new jacket in a bright color.")),
    ),
}

FILLER = (
    ("user", "The weather has been cold and rainy all week."),
    ("assistant", "Rainy weeks are a good excuse for books and warm drinks."),
    ("user", "Can you recommend a good science fiction novel?"),
    ("assistant", "Try 'The Left Hand of Darkness' by Ursula K. Le Guin."),
    ("user", "I started learning to play the guitar."),
    ("assistant", "Start with a few open chords and practise a little every day."),
    ("user", "My cat knocked a glass off the table this morning."),
    ("user", "How long should I rest between running sessions?"),
    ("assistant", "One rest day between hard runs is a good rule for beginners."),
    ("user", "I watched a documentary about octopuses last night."),
    ("user", "What's a quick way to fix a squeaky door?"),
    ("assistant", "A drop of oil on the hinge pins usually stops the squeak."),
    ("user", "I have a dentist appointment next Tuesday."),
    ("user", "My sister is visiting for the holidays."),
    ("assistant", "That sounds lovely, I hope you have a great time together."),
    ("user", "Can you explain how compound interest works?"),
    ("assistant", "Interest is added to the balance, so later interest is earned on earlier interest too."),
    ("user", "I finally cleaned out the garage."),
    ("user", "What are good stretches after a long day at a desk?"),
    ("assistant", "Neck rolls, a doorway chest stretch and hip flexor lunges help after desk work."),
    ("user", "My phone battery drains so fast lately."),
    ("user", "I planted tomatoes on the balcony."),
    ("assistant", "Tomatoes need lots of sun and regular watering."),
    ("user", "How do I make my sourdough starter more active?"),
    ("user", "I'm thinking about learning Spanish."),
    ("assistant", "Short daily practice with an app and a weekly conversation class works well."),
    ("user", "The neighbours had a loud party on Saturday."),
    ("user", "Any tips for sleeping better?"),
    ("assistant", "Keep a regular bedtime and avoid screens for an hour before sleep."),
    ("user", "I lost my umbrella on the bus again."),
)

PLACES = {  # kind: (names, mention templates, question templates)
    "museum": (("Tate Modern", "Louvre", "Prado", "Rijksmuseum", "Uffizi", "Guggenheim", "Hermitage", "Acropolis Museum",
                "British Museum", "Met", "MoMA", "Orsay"),
               ("I went to the {n} museum and loved the exhibition.", "I visited the {n} today, what a museum!",
                "Spent the afternoon at the {n} museum."),
               ("Which museum did I mention {e}?", "What was the museum I visited {e}?", "Which museum did I go to {e}?")),
    "restaurant": (("Blue Olive", "Casa Lupe", "Golden Dragon", "Le Petit Zinc", "Trattoria Nonna", "Sakura House",
                    "The Green Fork", "El Faro", "Spice Route", "Bistro Nord", "Mama Rosa", "Noodle Bar 88"),
                   ("We had dinner at {n}, great restaurant.", "Tried a new restaurant called {n} tonight.",
                    "Lunch at {n} today, the restaurant was packed."),
                   ("Which restaurant did I try {e}?", "What was the restaurant I told you about {e}?",
                    "Where did I eat out {e}?")),
    "book": (("Dune", "Middlemarch", "Beloved", "Piranesi", "Circe", "Stoner", "Rebecca", "Emma", "Solaris",
              "Kindred", "Ulysses", "Matilda"),
             ("I just finished reading {n}, what a book.", "I started the book {n} today.",
              "Reading {n} in the evenings, a good book."),
             ("Which book did I mention {e}?", "What book was I reading {e}?", "Which book did I talk about {e}?")),
    "hike": (("Eagle Ridge", "Pine Lake trail", "Blue Mountain", "Fox Canyon", "Silver Falls", "Misty Peak",
              "Cedar Valley", "Stone Bridge loop", "Red Rock trail", "Wolf Hill"),
             ("We hiked up {n} today, a beautiful hike.", "Did the {n} hike this morning.",
              "Went hiking on {n} with friends."),
             ("Where did I go hiking {e}?", "Which hike did I do {e}?", "What trail did I mention {e}?")),
}

# expression → (question date, target date, minimum gap in days between the target and a distractor)
_ANCHORS: dict[str, tuple[datetime, datetime, int]] = {
    "yesterday": (utc(2025, 11, 12, 18), utc(2025, 11, 11, 19), 4),
    "three days ago": (utc(2025, 11, 12, 18), utc(2025, 11, 9, 12), 5),
    "last week": (utc(2025, 11, 13, 18), utc(2025, 11, 5, 12), 10),
    "two weeks ago": (utc(2025, 11, 13, 18), utc(2025, 10, 30, 12), 12),
    "a month ago": (utc(2025, 11, 13, 18), utc(2025, 10, 14, 12), 30),
    "two months ago": (utc(2025, 11, 13, 18), utc(2025, 9, 13, 12), 40),
    "three months ago": (utc(2025, 11, 13, 18), utc(2025, 8, 12, 12), 40),
    "last month": (utc(2025, 11, 13, 18), utc(2025, 10, 16, 12), 35),
    "in March": (utc(2025, 11, 13, 18), utc(2025, 3, 14, 12), 40),
    "on May 3": (utc(2025, 11, 13, 18), utc(2025, 5, 3, 15), 20),
    "last spring": (utc(2025, 11, 13, 18), utc(2025, 4, 15, 12), 80),
    "last summer": (utc(2025, 11, 13, 18), utc(2025, 7, 15, 12), 80),
    "last year": (utc(2025, 5, 13, 18), utc(2024, 6, 20, 12), 200),
    "in 2023": (utc(2025, 5, 13, 18), utc(2023, 7, 1, 12), 220),
    "a few weeks ago": (utc(2025, 11, 13, 18), utc(2025, 10, 22, 12), 35),
    "earlier this year": (utc(2025, 11, 13, 18), utc(2025, 6, 20, 12), 200),
}

# topic: (user question, assistant detail, competing user turns, the question about the detail)
DETAILS = (
    ("How many eggs should I use for an omelette?", "For one omelette use {x} eggs, whisked with a pinch of salt.",
     ("I made an omelette for breakfast today.", "Are omelettes healthy to eat every day?",
      "My omelette always sticks to the pan, why?", "How many eggs are too many in an omelette?"),
     "How many eggs did you say for the omelette?", (2, 3, 4)),
    ("How long should I steep green tea?", "Steep green tea for {x} minutes at about 80 degrees.",
     ("I drink green tea every afternoon.", "Is green tea better than coffee?",
      "My green tea always tastes bitter, how long is too long to steep it?"),
     "How long did you say to steep the green tea?", (2, 3)),
    ("How much water do I need for a cup of rice?", "Use {x} cups of water for one cup of white rice.",
     ("I burnt the rice again yesterday.", "Should I rinse rice before cooking it?",
      "How much rice should I cook for four people?"),
     "How much water did you tell me for the rice?", ("1.5", "2")),
    ("How often should I water my succulents?", "Water succulents about once every {x} days and let the soil dry.",
     ("My succulents look a bit yellow.", "Do succulents need a lot of sun?",
      "How often do succulents need repotting?"),
     "How often did you say I should water the succulents?", (10, 14)),
    ("How many kilometres a week should I run to train for a half marathon?",
     "Build up to about {x} kilometres a week over twelve weeks.",
     ("I signed up for a half marathon in spring.", "What shoes are good for a half marathon?",
      "How many kilometres is a half marathon exactly?"),
     "How many kilometres a week did you recommend for the half marathon?", (30, 35, 40)),
    ("What temperature should I bake chocolate chip cookies at?",
     "Bake chocolate chip cookies at {x} degrees Celsius for about ten minutes.",
     ("I baked chocolate chip cookies with my niece.", "My cookies always spread too thin, what temperature is wrong?",
      "Can I freeze chocolate chip cookie dough?"),
     "What temperature did you say for the cookies?", (175, 180, 190)),
    ("How long should I boil an egg for a soft yolk?", "Boil it for {x} minutes, then put it in cold water.",
     ("I like soft boiled eggs with toast.", "Why do my boiled eggs crack in the pot?",
      "How long do boiled eggs keep in the fridge?"),
     "How many minutes did you say to boil the egg?", (6, 7)),
    ("How much yeast do I need for one loaf of bread?", "Use {x} grams of dry yeast for a 500 gram flour loaf.",
     ("My bread didn't rise last weekend.", "Is fresh yeast better than dry yeast for bread?",
      "How long should bread dough rise?"),
     "How much yeast did you tell me to use for the bread?", (5, 7, 10)),
    ("What size tent should I get for two people?", "Get a {x}-person tent so there is room for your bags.",
     ("We are going camping in the mountains next month.", "Is a tent with two doors worth it?",
      "How heavy should a tent for two people be?"),
     "What tent size did you suggest for the two of us?", (3,)),
    ("How many hours of sleep does a teenager need?", "Teenagers need about {x} hours of sleep a night.",
     ("My son stays up late gaming.", "Is it bad for a teenager to sleep until noon?",
      "How can I get my teenager to sleep earlier?"),
     "How many hours of sleep did you say a teenager needs?", ("8 to 10", "9")),
)


@dataclass(frozen=True)
class Case:
    """One synthetic user: their turns, and when the questions about them are asked."""

    user: str
    turns: tuple[Turn, ...]
    asked_at: datetime


@dataclass(frozen=True)
class UpdateCase(Case):
    old: int  # index of the turn that stated the old value
    new: int  # index of the turn that stated the new value
    current_question: str
    past_question: str


@dataclass(frozen=True)
class AnchorCase(Case):
    target: int  # index of the mention inside the period the question names
    question: str
    expression: str


@dataclass(frozen=True)
class DetailCase(Case):
    detail: int  # index of the assistant's turn with the detail
    question: str


def _filler(rng: random.Random, n: int) -> list[tuple[str, str]]:
    start = rng.randrange(len(FILLER))
    return [FILLER[(start + i) % len(FILLER)] for i in range(n)]


def _timed(lines: list[tuple[str, str]], start: datetime, step: timedelta) -> list[Turn]:
    return [(role, text, start + i * step) for i, (role, text) in enumerate(lines)]


def update_case(rng: random.Random, index: int) -> UpdateCase:
    slot = rng.choice(sorted(SLOTS))
    values, olds, news, currents, pasts, topic = SLOTS[slot]
    old, new = rng.sample(values, 2)
    lines = _filler(rng, rng.randint(2, 5)) + [("user", rng.choice(olds).format(v=old))]
    old_i = len(lines) - 1
    middle = _filler(rng, rng.randint(6, 12)) + list(rng.sample(topic, min(3, len(topic))))
    rng.shuffle(middle)
    lines += middle + [("user", rng.choice(news).format(v=new))]
    new_i = len(lines) - 1
    after = _filler(rng, rng.randint(3, 8)) + list(rng.sample(topic, 2))
    rng.shuffle(after)
    lines += after
    start = utc(2025, 1, 6, 9) + timedelta(days=rng.randrange(60))
    turns = _timed(lines, start, timedelta(hours=rng.choice((5, 20, 50))))
    return UpdateCase(f"upd{index}", tuple(turns), turns[-1][2] + timedelta(days=2), old=old_i, new=new_i,
                      current_question=rng.choice(currents), past_question=rng.choice(pasts).format(new=new))


def anchor_case(rng: random.Random, index: int) -> AnchorCase:
    kind = rng.choice(sorted(PLACES))
    names, mentions, questions = PLACES[kind]
    expression = rng.choice(sorted(_ANCHORS))
    asked_at, target_at, gap = _ANCHORS[expression]
    chosen = rng.sample(names, 4)
    dates = [target_at]
    while len(dates) < 4:  # distractors: same kind, clearly outside the period, before the question
        at = asked_at - timedelta(days=rng.randint(1, 1100), hours=rng.randint(0, 8))
        if abs((at - target_at).days) >= gap and all(abs((at - d).days) >= max(2, gap // 4) for d in dates[1:]):
            dates.append(at)
    turns: list[Turn] = []
    for name, at in zip(chosen, dates):
        turns.append(("user", rng.choice(mentions).format(n=name), at))
        for j, (role, text) in enumerate(_filler(rng, rng.randint(1, 3))):
            turns.append((role, text, at + timedelta(minutes=10 * (j + 1))))
    turns.sort(key=lambda t: t[2])
    target = next(i for i, t in enumerate(turns) if t[2] == target_at)  # filler turns come minutes after
    return AnchorCase(f"anc{index}", tuple(turns), asked_at, target=target,
                      question=rng.choice(questions).format(e=expression), expression=expression)


def detail_case(rng: random.Random, index: int) -> DetailCase:
    ask, answer, competing, question, numbers = rng.choice(DETAILS)
    prefix = _filler(rng, rng.randint(2, 6))
    lines = prefix + [("user", ask), ("assistant", answer.format(x=rng.choice(numbers)))]
    later = _filler(rng, rng.randint(4, 10)) + [("user", c) for c in competing]
    rng.shuffle(later)
    lines += later
    turns = _timed(lines, utc(2025, 3, 1, 9) + timedelta(days=rng.randrange(90)), timedelta(hours=rng.choice((1, 12, 30))))
    detail = len(prefix) + 1
    return DetailCase(f"det{index}", tuple(turns), turns[-1][2] + timedelta(days=3), detail=detail, question=question)


def generate(n: int, seed: int) -> tuple[list[UpdateCase], list[AnchorCase], list[DetailCase]]:
    """``n`` cases of each kind, reproducible from ``seed``."""
    rng = random.Random(seed)
    return ([update_case(rng, i) for i in range(n)], [anchor_case(rng, i) for i in range(n)],
            [detail_case(rng, i) for i in range(n)])
