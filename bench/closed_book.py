"""Closed-book chat recall of a user's own facts, written into that user's model by knowledge edits.

Seeded synthetic users, each with ``--facts`` current facts and one chain A→B→C (edits applied in order;
a later value replaces the earlier edit of the same slot). Each slot is asked in chat with two
paraphrases — the first a question the edit was trained on, the second a held-out one — and answered
greedily, closed-book, by the base model and by the user's own model (base + that user's deltas) for each
method; user i+1's questions are also put to user i's model. An answer is right when it contains the value.

Figures (percentages): ``accuracy`` (current values), ``superseded_rate`` (chain slot answered with A or B),
``other_user_accuracy`` (another user's model on this user's questions: should stay at the base level),
``neutral_accuracy`` (general chat questions — capital of France, days in a week, … — still answered right
by each user's model, all edits in), ``s_per_edit``; ``base.accuracy`` is the unedited model on the same questions.

Besides the editing methods, ``adapter`` is the user's style adapter as pllm's refresh trains it
(:func:`editing.oppu.refresh_config`) on their own turns (``--turns`` everyday turns) and the Q/A pairs of their *current* facts, and
``adapter+METHOD`` is that adapter with METHOD's edits computed on top of it — the published combination.
Their ``s_per_edit`` is the adapter's training time per fact (plus the edits'). ``--no-anchors`` trains the
adapter without the anchor examples (:mod:`editing.oppu.anchors`), as pllm did before them.

    python bench/closed_book.py [--users 2] [--facts 3] [--seed 0] [--methods ft_l rome rome_chat memit_chat memit_chat_wide adapter adapter+ft_l] [--threads 1] [--json]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402

# (relation, category) → values; a user draws one slot per fact and distinct users get distinct values.
POOLS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("lives_in", None): ("Lisbon", "Oslo", "Nairobi", "Toronto", "Kyoto", "Valparaiso", "Krakow", "Dublin"),
    ("works_as", None): ("nurse", "carpenter", "pilot", "librarian", "chemist", "plumber", "architect", "baker"),
    ("favorite", "band"): ("Radiohead", "Coldplay", "Metallica", "ABBA", "Nirvana", "Queen", "Muse", "Blondie"),
    ("favorite", "food"): ("sushi", "lasagna", "tacos", "paella", "ramen", "falafel", "goulash", "pierogi"),
    ("favorite", "color"): ("purple", "orange", "turquoise", "crimson", "yellow", "magenta", "olive", "teal"),
    ("has_pet", None): ("parrot", "hamster", "tortoise", "ferret", "rabbit", "iguana", "goldfish", "chinchilla"),
    ("from", None): ("Glasgow", "Porto", "Seville", "Bergen", "Lyon", "Gdansk", "Munich", "Bologna"),
    ("name", None): ("Priya", "Tomasz", "Amara", "Joaquin", "Ingrid", "Kenji", "Fatima", "Oskar"),
    ("works_at", None): ("Siemens", "Nokia", "Spotify", "Lego", "Ikea", "Philips", "Heineken", "Zara"),
    ("studies", None): ("biology", "history", "economics", "physics", "linguistics", "geology", "philosophy",
                        "astronomy"),
    ("partner", None): ("Marta", "Lukas", "Noor", "Elena", "Mateo", "Sofia", "Henrik", "Leila"),
    ("favorite", "drink"): ("espresso", "lemonade", "kombucha", "matcha", "cider", "mojito", "chai", "horchata"),
    ("favorite", "sport"): ("tennis", "rugby", "cricket", "volleyball", "curling", "badminton", "fencing", "rowing"),
    ("allergic_to", None): ("peanuts", "shellfish", "pollen", "penicillin", "latex", "sesame", "gluten", "mustard"),
}
CHAIN_SLOTS = (("lives_in", None), ("favorite", "band"), ("favorite", "food"))


@dataclass
class Slot:
    relation: str
    category: str | None
    values: list[str]  # one value, or the chain A, B, C in the order they are learned

    @property
    def current(self) -> str:
        return self.values[-1]


@dataclass
class User:
    name: str
    slots: list[Slot] = field(default_factory=list)
    chain: Slot | None = None


def make_users(n_users: int, n_facts: int, seed: int) -> list[User]:
    """``n_users`` users with ``n_facts`` single-valued slots each and one chain slot A→B→C."""
    if n_facts + 1 > len(POOLS):
        sys.exit(f"--facts must be at most {len(POOLS) - 1}")
    rng = random.Random(seed)
    shuffled = {k: rng.sample(v, len(v)) for k, v in POOLS.items()}  # distinct users draw distinct values
    users = []
    for i in range(n_users):
        chain_key = CHAIN_SLOTS[rng.randrange(len(CHAIN_SLOTS))]
        others = [k for k in POOLS if k != chain_key]
        user = User(f"user{i + 1}")
        for key in rng.sample(others, n_facts):
            user.slots.append(Slot(key[0], key[1], [shuffled[key][i % len(shuffled[key])]]))
        pool = shuffled[chain_key]
        user.chain = Slot(chain_key[0], chain_key[1], [pool[(i + j * n_users) % len(pool)] for j in (1, 2, 3)])
        users.append(user)
    return users


def fact_of(slot: Slot, value: str) -> Any:
    from memory.records import Fact  # the bench composes memory and editing, as the agent does
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return Fact(user_id="bench", subject="user", relation=slot.relation, object=value, valid_from=now,
                recorded_at=now, category=slot.category, kind="preference" if slot.relation == "favorite" else "fact")


def eval_questions(slot: Slot) -> tuple[str, str]:
    """A trained question and a held-out paraphrase of the slot."""
    from editing.fact_edits import chat_questions_for

    questions = chat_questions_for(slot.relation, slot.category)
    return questions[0], questions[-1]


# ------------------------------------------------------------------------------------ methods

def method_spec(name: str) -> tuple[str, Any, bool]:
    """(registered method, hparams, chat-form requests?) for a bench method name.

    ``NAME:key=value,key=value`` overrides hyper-parameters (values as Python literals), e.g.
    ``ft_l:lr=0.04,num_steps=8`` — a sweep in one run, beside the defaults.
    """
    import ast
    import dataclasses

    from editing import MEMITHyperParams, ROMEHyperParams
    from editing.ft_l import FTLHyperParams

    name, _, overrides = name.partition(":")

    specs = {
        "rome": ("rome", ROMEHyperParams(), False),  # (a) ROME on the plain prompt
        "rome_chat": ("rome", ROMEHyperParams(), True),  # (b) one ROME delta per chat context
        "memit_chat": ("memit", MEMITHyperParams(), True),  # (b) MEMIT over the chat contexts, layers 3-5
        "memit_chat_wide": ("memit", MEMITHyperParams(layers=(2, 3, 4, 5, 6, 7)), True),  # (c)
        "ft_l": ("ft_l", FTLHyperParams(), False),  # (d) constrained fine-tune on chat Q/A pairs
    }
    if name not in specs:
        sys.exit(f"unknown bench method {name!r}; known: {sorted(specs)}")
    method, hparams, chat = specs[name]
    changes = {}
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        try:
            changes[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            sys.exit(f"override {item!r} of {name}: the value must be a Python literal (0.04, 8, (3, 4), None)")
    try:
        return method, dataclasses.replace(hparams, **changes), chat
    except TypeError as exc:
        sys.exit(f"bad override for {name}: {exc}")


_TURNS = ["Morning! Slept badly, the neighbours had a party again.", "Work was long today, lots of meetings.",
          "I finally finished that novel I told you about.", "Thinking of cooking something new this weekend.",
          "The weather is so grey lately, I miss the sun.", "Went for a run by the river, felt great.",
          "My phone keeps dying, need a new battery.", "Any ideas for a quiet evening at home?"]


def train_style_adapter(lm: Any, user: User, turns: int, anchors: bool = True) -> tuple[list[Any], float]:
    """The user's style adapter as the worker's refresh trains it: own turns + current facts' Q/A pairs + the
    anchor examples, :func:`editing.oppu.refresh_config`."""
    from editing.oppu import REFRESH_CONTEXT_TURNS, anchor_examples, build_examples, refresh_config, train_adapter

    dialogue = []
    for i in range(turns):
        dialogue += [{"role": "user", "content": _TURNS[i % len(_TURNS)]}, {"role": "assistant", "content": "I see."}]
    facts = [fact_of(slot, slot.current) for slot in [*user.slots, user.chain]]  # current values only
    examples = build_examples(dialogue, facts, context_turns=REFRESH_CONTEXT_TURNS)
    if anchors:
        examples += anchor_examples(lm.model, lm.tokenizer)
    t0 = time.perf_counter()
    adapter = train_adapter(lm.model, lm.tokenizer, examples, refresh_config(int(lm.model.config.num_hidden_layers)),
                            base_model_id=lm.model_id)
    return adapter.lora_deltas(), time.perf_counter() - t0


class UserModel:
    """One user's active edits by slot key; a new value of a slot replaces that slot's edit.

    ``under``: deltas beneath the edits (the user's style adapter): in place while each edit is computed, and
    part of the user's model.
    """

    def __init__(self, lm: Any, method: str, under: list[Any] | None = None) -> None:
        self.lm, self.spec = lm, method_spec(method)
        self.under = list(under or [])
        self.edits: dict[str, list[Any]] = {}  # key → EditResults
        self.seconds: list[float] = []

    @property
    def deltas(self) -> list[Any]:
        return self.under + [d for results in self.edits.values() for r in results for d in r.deltas]

    def learn(self, fact: Any) -> None:
        import torch

        from editing import apply_deltas, get_method
        from editing.chat_prompts import chat_form_requests
        from editing.fact_edits import edit_request_for

        request = edit_request_for(fact)
        self.edits.pop(request.key, None)
        name, hparams, chat = self.spec
        requests = chat_form_requests(self.lm.tokenizer, request) if chat else [request]
        preserve: dict[str, list[torch.Tensor]] = {}
        for results in self.edits.values():
            for r in results:
                for module, keys in r.keys.items():
                    preserve.setdefault(module, []).append(keys)
        t0 = time.perf_counter()
        with apply_deltas(self.lm.model, self.deltas):  # the new edit is computed with the earlier ones in place
            self.edits[request.key] = get_method(name).compute(
                self.lm.model, self.lm.tokenizer, requests, hparams,
                preserve={m: torch.cat(k) for m, k in preserve.items()})
        self.seconds.append(time.perf_counter() - t0)


def answers(lm: Any, user: User, deltas: list[Any], max_new_tokens: int) -> list[tuple[Slot, str]]:
    from editing.checks import closed_book_answer

    return [(slot, closed_book_answer(lm.model, lm.tokenizer, q, deltas, max_new_tokens))
            for slot in [*user.slots, user.chain] for q in eval_questions(slot)]


def neutral_kept(lm: Any, deltas: list[Any], max_new_tokens: int) -> list[bool]:
    """Each neutral chat question (capital of France, days in a week, ...) still answered right by the model."""
    from editing.chat_prompts import NEUTRAL_ANSWERS, NEUTRAL_CHAT
    from editing.checks import closed_book_answer, contains_target

    return [any(contains_target(closed_book_answer(lm.model, lm.tokenizer, q, deltas, max_new_tokens), a)
                for a in NEUTRAL_ANSWERS[q]) for q in NEUTRAL_CHAT]


def accuracy(pairs: list[tuple[Slot, str]]) -> float:
    from editing.checks import contains_target

    return 100 * statistics.mean(contains_target(a, s.current) for s, a in pairs)


class AdapterOnly:
    """A user's model that is their style adapter alone (no edits)."""

    def __init__(self, deltas: list[Any], seconds: float, n_facts: int) -> None:
        self.deltas, self.seconds = deltas, [seconds / n_facts] * n_facts


def run_method(lm: Any, users: list[User], method: str, max_new_tokens: int,
               turns: int = 8, anchors: bool = True) -> tuple[dict[str, float], list[Any]]:
    from editing.checks import contains_target

    models: list[Any] = []
    adapter, _, edit_method = method.partition("+")
    if adapter != "adapter":
        adapter, edit_method = "", method
    for user in users:
        n_facts = len(user.slots) + 1
        if adapter:
            style, train_s = train_style_adapter(lm, user, turns, anchors)
            if not edit_method:
                models.append(AdapterOnly(style, train_s, n_facts))
                continue
        model = UserModel(lm, edit_method, under=style if adapter else None)
        for slot in user.slots:
            model.learn(fact_of(slot, slot.current))
        for value in user.chain.values:
            model.learn(fact_of(user.chain, value))
        if adapter:
            model.seconds = [s + train_s / n_facts for s in model.seconds]
        models.append(model)
    own, superseded, other, held_out, neutral = [], [], [], [], []
    for i, (user, model) in enumerate(zip(users, models)):
        pairs = answers(lm, user, model.deltas, max_new_tokens)
        neutral += neutral_kept(lm, model.deltas, 16)
        own += pairs
        held_out += pairs[1::2]
        superseded += [any(contains_target(a, v) for v in s.values[:-1]) for s, a in pairs if s is user.chain]
        if len(users) > 1:
            other += answers(lm, users[(i + 1) % len(users)], model.deltas, max_new_tokens)
    seconds = [s for m in models for s in m.seconds]
    figures = {"accuracy": round(accuracy(own), 1), "superseded_rate": round(100 * statistics.mean(superseded), 1),
               "other_user_accuracy": round(accuracy(other), 1) if other else None,
               "s_per_edit": round(statistics.mean(seconds), 1), "held_out_accuracy": round(accuracy(held_out), 1),
               "neutral_accuracy": round(100 * statistics.mean(neutral), 1)}
    return figures, own


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--users", type=int, default=2)
    p.add_argument("--facts", type=int, default=3, help="current single-valued facts per user (plus one chain)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=None, help="bench methods (default: the library default)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--turns", type=int, default=8, help="everyday own turns in each user's adapter training data")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (1: on a shared 2-core CPU two threads were ~5x slower)")
    p.add_argument("--cache-dir", type=Path, default=Path(".pllm-home") / "models")
    p.add_argument("--show", action="store_true", help="print every answer")
    p.add_argument("--no-anchors", action="store_true", help="train the style adapter without the anchor examples")
    args = p.parse_args()
    if args.users < 1 or args.facts < 1:
        sys.exit("--users and --facts must be >= 1")
    from editing import LocalModel, RuntimeConfig
    from editing.methods import DEFAULT_METHOD

    methods = args.methods or [DEFAULT_METHOD]
    for m in methods:
        if m != "adapter":
            method_spec(m.removeprefix("adapter+"))
    users = make_users(args.users, args.facts, args.seed)
    lm = LocalModel.load(RuntimeConfig(cache_dir=args.cache_dir, threads=args.threads))
    base_pairs = [pair for u in users for pair in answers(lm, u, [], args.max_new_tokens)]
    summary: dict[str, Any] = {"base": {"accuracy": round(accuracy(base_pairs), 1),
                                        "neutral_accuracy": round(100 * statistics.mean(neutral_kept(lm, [], 16)), 1)}}
    for method in methods:
        summary[method], pairs = run_method(lm, users, method, args.max_new_tokens, args.turns, not args.no_anchors)
        if args.show:
            for slot, answer in pairs:
                print(f"[{method}] {slot.relation}/{slot.category} = {slot.current!r}: {answer!r}")
    summary["default"] = DEFAULT_METHOD
    summary["setup"] = {"users": args.users, "facts": args.facts, "seed": args.seed,
                        "questions_per_user": 2 * (args.facts + 1)}
    rows = [(m, summary[m]["accuracy"], summary[m]["held_out_accuracy"], summary[m]["superseded_rate"],
             summary[m]["other_user_accuracy"], summary[m]["neutral_accuracy"], summary[m]["s_per_edit"])
            for m in methods]
    rows.insert(0, ("base", summary["base"]["accuracy"], "", "", "", summary["base"]["neutral_accuracy"], ""))
    print_table(f"closed-book chat recall, {args.users} users × ({args.facts} facts + a chain A→B→C)",
                ["method", "accuracy %", "held-out %", "superseded %", "other user %", "neutral %", "s/edit"], rows)
    emit_json(summary)


if __name__ == "__main__":
    main()
