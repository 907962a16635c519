"""Seeded synthetic users for ``bench/memory_qa.py``: facts stated in chat turns among filler, then questions.

Each user gets a handful of personal facts (name, city, job, pet, favorite food, partner, allergy, ...),
each stated once in a natural chat turn, shuffled among filler turns over 1-3 sessions. Some facts change
later (a move, a new job): the question about them then expects the *new* value. Questions are in chat
form ("What's my dog called?") and are scored by whether the reply contains the expected value
(case-insensitive, punctuation and spacing normalized).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["SynthTurn", "SynthQuestion", "SynthUser", "make_users", "contains_value"]


@dataclass(frozen=True)
class SynthTurn:
    session: int  # 0-based
    role: str  # "user" or "assistant"
    text: str


@dataclass(frozen=True)
class SynthQuestion:
    slot: str
    text: str
    answer: str
    after_update: bool


@dataclass(frozen=True)
class SynthUser:
    user_id: str
    turns: tuple[SynthTurn, ...]
    questions: tuple[SynthQuestion, ...]


# slot → (values, statement templates, question templates); statements take {v}.
_SLOTS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "name": (["Maya", "Tomas", "Ingrid", "Rafael", "Aiko", "Jonah", "Leila", "Bruno", "Greta", "Nikhil"],
             ["My name is {v}.", "Hi, I'm {v}, nice to meet you."],
             ["What's my name?", "Do you remember what I'm called?"]),
    "city": (["Oslo", "Lisbon", "Porto", "Vienna", "Toronto", "Madrid", "Dublin", "Kyoto", "Seattle", "Prague"],
             ["I live in {v}.", "I've been living in {v} for a few years now."],
             ["Where do I live now?", "Which city do I live in?"]),
    "job": (["nurse", "teacher", "plumber", "architect", "chef", "pilot", "librarian", "dentist", "carpenter"],
            ["I work as a {v}.", "I'm a {v} by profession."],
            ["What do I do for a living?", "What's my job?"]),
    "dog": (["Biscuit", "Rex", "Pepper", "Luna", "Waffles", "Mango", "Shadow", "Nala", "Ziggy"],
            ["My dog is called {v}.", "I have a dog named {v}."],
            ["What's my dog called?", "What's my dog's name?"]),
    "food": (["sushi", "lasagna", "tacos", "ramen", "paella", "dumplings", "curry", "risotto"],
             ["My favorite food is {v}.", "I could eat {v} every day, it's my favorite food."],
             ["What's my favorite food?", "Which food do I love most?"]),
    "partner": (["Anna", "Lucas", "Sofia", "Daniel", "Elena", "Marco", "Hannah", "Omar"],
                ["My partner is {v}.", "I live with my partner {v}."],
                ["What's my partner's name?", "Who is my partner?"]),
    "allergy": (["peanuts", "shellfish", "gluten", "strawberries", "eggs", "sesame", "walnuts"],
                ["I am allergic to {v}.", "I have an allergy to {v}."],
                ["What should I avoid eating?", "What am I allergic to?"]),
    "sport": (["tennis", "climbing", "swimming", "rowing", "badminton", "cycling", "surfing"],
              ["My favorite sport is {v}.", "I love {v}, I do it every weekend."],
              ["Which sport do I love?", "What's my favorite sport?"]),
}
# Slots that can change later, with the turn that states the new value.
_UPDATES = {
    "city": ["I moved to {v} last month.", "I just moved to {v}."],
    "job": ["I changed jobs, now I work as a {v}.", "I quit my old job and now I'm a {v}."],
}
_FILLER = [
    "The weather has been strange this week.", "Can you recommend a good podcast?", "I watched a movie last night.",
    "What's a quick recipe for dinner?", "I'm thinking about learning to play the guitar.",
    "Traffic was terrible this morning.", "How do I keep houseplants alive?", "I finally cleaned my garage.",
    "Any tips for sleeping better?", "I read an interesting article about space.", "My phone battery dies so fast.",
    "What's a good way to start running?", "I'm planning to repaint the kitchen.", "Tell me a fun fact.",
    "I spent the afternoon at the library.", "How long should I boil an egg?",
]
_ACKS = ["Good to know!", "Thanks for telling me.", "Sounds nice.", "Got it.", "Interesting!"]


def make_users(n: int, seed: int, *, facts_per_user: int = 5, filler_per_session: int = 3) -> list[SynthUser]:
    """``n`` users from ``seed`` (same seed → same users). About a third of users get one update each."""
    rng = random.Random(seed)
    users = []
    for i in range(n):
        slots = rng.sample(sorted(_SLOTS), facts_per_user)
        sessions = rng.randint(1, 3)
        stated: list[tuple[int, str]] = []  # (session, text) of user statements
        values: dict[str, str] = {}
        for slot in slots:
            vals, says, _ = _SLOTS[slot]
            values[slot] = rng.choice(vals)
            stated.append((rng.randrange(sessions), rng.choice(says).format(v=values[slot])))
        updated: set[str] = set()
        changeable = [s for s in slots if s in _UPDATES]
        if changeable and rng.random() < 0.4:
            slot = rng.choice(changeable)
            new = rng.choice([v for v in _SLOTS[slot][0] if v != values[slot]])
            values[slot] = new
            updated.add(slot)
            stated.append((sessions, rng.choice(_UPDATES[slot]).format(v=new)))  # an extra, later session
            sessions += 1
        turns: list[SynthTurn] = []
        for s in range(sessions):
            lines = [t for sess, t in stated if sess == s] + rng.sample(_FILLER, filler_per_session)
            head, tail = lines[:1], lines[1:]
            rng.shuffle(tail)
            for text in (head + tail if s == sessions - 1 and updated else _shuffled(rng, lines)):
                turns.append(SynthTurn(s, "user", text))
                turns.append(SynthTurn(s, "assistant", rng.choice(_ACKS)))
        questions = tuple(SynthQuestion(slot, rng.choice(_SLOTS[slot][2]), values[slot], slot in updated)
                          for slot in slots)
        users.append(SynthUser(f"synth-{seed}-{i}", tuple(turns), questions))
    return users


def _shuffled(rng: random.Random, lines: list[str]) -> list[str]:
    out = list(lines)
    rng.shuffle(out)
    return out


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def contains_value(reply: str, value: str) -> bool:
    """The reply names the value (case-insensitive, punctuation ignored, on word boundaries)."""
    return f" {_norm(value)} " in f" {_norm(reply)} "
