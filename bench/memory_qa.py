"""Do the replies use what is remembered? Answer accuracy with pllm's prompt vs no memory vs full context.

Two parts, one model (SmolLM2-135M-Instruct by default, greedy, short replies), one run:

* **synthetic** (:mod:`bench._synth_users`): seeded users state facts in chat turns among filler over 1-3
  sessions (each user turn stored through ``Memory.remember``, with a short assistant acknowledgement as an
  assistant episode); then chat-form questions in a new session, some about a fact that changed (the answer
  is the new value). Score: the reply contains the value (case-insensitive, punctuation ignored).
* **LoCoMo QA**: the first ``--locomo-limit`` questions of categories 1-4 (multi-hop, temporal,
  open-domain, single-hop; category 5, adversarial, is skipped: its gold answer is "not mentioned") of the
  first conversation(s), every turn stored as in ``bench/locomo.py``. Score: LoCoMo's official token F1
  (lowercase, punctuation and articles removed, Porter-stemmed tokens — nltk's ``PorterStemmer`` —, F1 over
  token multisets; category 1 answers split on commas, each gold part scored by its best predicted part).

Systems (same model, same generation settings, same run):

* ``pllm``         — ``Memory.recall`` → :func:`agent.prompt.build_prompt` (the respond node's path) → generate;
* ``no_memory``    — the question alone;
* ``pllm_model``   — pllm's prompt answered by the user's own model: before the questions, each asked user's current
                     facts are written into their model by :class:`editing.personal.KnowledgeEditor` (the default
                     method, its check on, as the model-update worker does), and the reply runs with their
                     published adapter. Opt-in (``--systems``): about half a minute per fact on a 2-core CPU;
                     synthetic users only;
* ``full_context`` — the whole history before the question, cut from the oldest to fit: as chat messages
  for the synthetic users (budget ``--full-budget``, 1536 tokens, the same as pllm's prompt budget);
  for LoCoMo as one quoted transcript of at most ``--locomo-budget`` (3000) prompt tokens — SmolLM2's
  window is 8192, the cap keeps a run short on CPU.

Every system gets the same answer hint as pllm's layout (if any), so the difference is the memory.
``--variant NAME:key=value,key=value`` adds a pllm row with other :class:`agent.prompt.PromptLayout`
values (layout tuning; ``--systems pllm`` skips the baselines).

    python bench/memory_qa.py [DATA] [--users 12] [--seed 7] [--limit 40] [--locomo-limit 12]
                              [--max-new-tokens 32] [--variant NAME:k=v,...] [--systems pllm,...] [--json]
"""

from __future__ import annotations

import logging
import re
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._common import emit_json, parser, print_table  # noqa: E402
from bench._data import DEFAULT_DATA, LocomoConversation, load_locomo, parse_overrides, require  # noqa: E402
from bench._synth_users import SynthUser, contains_value, make_users  # noqa: E402

SYSTEMS = ("pllm", "pllm_model", "no_memory", "full_context")
DEFAULT_SYSTEMS = ("pllm", "no_memory", "full_context")
LOCOMO_CATS = (1, 2, 3, 4)

# --------------------------------------------------------------------------- LoCoMo's token F1


def _normalize(text: str) -> str:
    text = text.lower().replace(",", "")
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the|and)\b", " ", text)
    return " ".join(text.split())


def _stems(text: str) -> list[str]:
    from nltk.stem import PorterStemmer

    stemmer = PorterStemmer()
    return [stemmer.stem(w) for w in _normalize(text).split()]


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the Porter-stemmed, normalized token multisets."""
    pred, ref = _stems(prediction), _stems(gold)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def locomo_f1(prediction: str, gold: str, category: int) -> float:
    """LoCoMo's QA score of one answer: multi-hop (1) gold parts each matched by the best predicted part."""
    if category == 1:
        preds = [p.strip() for p in prediction.split(",")]
        golds = [g.strip() for g in gold.split(",")]
        return sum(max(token_f1(p, g) for p in preds) for g in golds) / len(golds)
    if category == 3:
        gold = gold.split(";")[0].strip()
    return token_f1(prediction, gold)


# --------------------------------------------------------------------------- the systems


class Runner:
    """The model, a memory under a temp folder, and the three ways to answer."""

    def __init__(self, local: Any, memory: Any, settings: Any, hint: str, full_budget: int) -> None:
        self.local, self.memory, self.settings, self.hint, self.full_budget = local, memory, settings, hint, full_budget
        self.views: dict[str, Any] = {}  # user → their published adapter view (pllm_model)
        self.edit_report: dict[str, Any] = {"facts": 0, "edits": 0, "rejected": 0, "seconds": 0.0}

    def ask(self, turns: list[dict[str, str]], view: Any = None) -> str:
        return self.local.generate(turns, self.settings, view=view).strip()

    def write_facts(self, users: Sequence[str], home: Path) -> None:
        """Each user's current facts into their own model, as the model-update worker's fact job does."""
        from editing import AdapterStore
        from editing.personal import KnowledgeEditor, private_copy
        from editing.user_edits import EditRegistry

        adapters = AdapterStore(home / "adapters")
        editor = KnowledgeEditor(private_copy(self.local), EditRegistry(home), adapters)
        for user in users:
            facts = self.memory.facts(user)
            report = editor.sync(user, facts)
            self.edit_report["facts"] += len(facts)
            self.edit_report["edits"] += len(report.added)
            self.edit_report["rejected"] += len(report.rejected)
            self.edit_report["seconds"] += report.seconds
            if report.version is not None or adapters.versions(user):
                self.views[user] = adapters.view(user, base_model_id=self.local.model_id)

    def _q(self, question: str) -> str:
        return f"{question}\n{self.hint}" if self.hint else question

    def pllm(self, user: str, question: str, layout: Any, view: Any = None) -> str:
        from agent.chat_model import to_chat_turns
        from agent.prompt import build_prompt

        rec = self.memory.recall(user, question)
        built = build_prompt(user_id=user, message=question, recollection=rec, history=[],
                             count_tokens=self.local.count_tokens, now=self.memory.clock.now(), layout=layout)
        return self.ask(to_chat_turns(built.messages), view)

    def no_memory(self, question: str) -> str:
        return self.ask([{"role": "user", "content": self._q(question)}])

    def full_chat(self, history: Sequence[tuple[str, str]], question: str) -> str:
        """The whole history as chat messages after pllm's system message, oldest cut to fit the budget."""
        from agent.prompt import SYSTEM_INSTRUCTIONS

        turns = [{"role": role, "content": text} for role, text in history]
        fixed = self.local.count_tokens(SYSTEM_INSTRUCTIONS) + self.local.count_tokens(question) + 24
        cost = [self.local.count_tokens(t["content"]) + 6 for t in turns]
        while turns and fixed + sum(cost) > self.full_budget:
            turns.pop(0)
            cost.pop(0)
        return self.ask([{"role": "system", "content": SYSTEM_INSTRUCTIONS}, *turns,
                         {"role": "user", "content": self._q(question)}])

    def full_transcript(self, lines: Sequence[str], question: str, budget: int) -> str:
        """A quoted transcript of the most recent lines that fit ``budget`` tokens, then the question."""
        from agent.prompt import SYSTEM_INSTRUCTIONS

        room = budget - self.local.count_tokens(SYSTEM_INSTRUCTIONS) - self.local.count_tokens(question) - 40
        kept: list[str] = []
        for line in reversed(lines):
            room -= self.local.count_tokens(line) + 1
            if room < 0:
                break
            kept.append(line)
        body = "\n".join(reversed(kept))
        return self.ask([{"role": "system", "content": SYSTEM_INSTRUCTIONS},
                         {"role": "user", "content": f"Our conversation so far (quoted data):\n{body}\n\n"
                                                     f"My message: {self._q(question)}"}])


def run_synthetic(runner: Runner, users: Sequence[SynthUser], layouts: dict[str, Any], systems: Sequence[str],
                  limit: int | None, log: Callable[[str], None],
                  edits_home: Path | None = None) -> tuple[dict[str, list[bool]], list[dict[str, Any]]]:
    """Store every user's turns, then ask the questions → ({row: [correct, ...]}, per-question records)."""
    clock = runner.memory.clock
    start = clock.now()
    for u in users:
        for t in u.turns:
            clock.set(max(clock.now(), start + timedelta(days=7 * t.session)))
            clock.advance(timedelta(seconds=30))
            runner.memory.remember(u.user_id, t.text, role=t.role, session_id=f"s{t.session}")
    clock.advance(timedelta(days=30))
    scores: dict[str, list[bool]] = {}
    records = []
    questions = [(u, q) for u in users for q in u.questions][: limit or None]
    from agent.prompt import PromptLayout

    if "pllm_model" in systems:
        asked = list(dict.fromkeys(u.user_id for u, _ in questions))
        runner.write_facts(asked, edits_home or Path(tempfile.mkdtemp(prefix="pllm-memqa-edits-")))
        log(f"  edits: {runner.edit_report}")
    for n, (u, q) in enumerate(questions, 1):
        replies: dict[str, str] = {}
        for name, layout in layouts.items():
            replies[name] = runner.pllm(u.user_id, q.text, layout)
        if "pllm_model" in systems:
            replies["pllm_model"] = runner.pllm(u.user_id, q.text, PromptLayout(), runner.views.get(u.user_id))
        if "no_memory" in systems:
            replies["no_memory"] = runner.no_memory(q.text)
        if "full_context" in systems:
            history = [(t.role, t.text) for t in u.turns]
            replies["full_context"] = runner.full_chat(history, q.text)
        for row, reply in replies.items():
            scores.setdefault(row, []).append(contains_value(reply, q.answer))
        records.append({"user": u.user_id, "q": q.text, "answer": q.answer, "update": q.after_update, **replies})
        log(f"  [{n}/{len(questions)}] {q.text} -> {q.answer}: " +
            "; ".join(f"{r}={'ok' if scores[r][-1] else 'no'} {replies[r][:70]!r}" for r in replies))
    return scores, records


def run_locomo(runner: Runner, convs: Sequence[LocomoConversation], limit: int, systems: Sequence[str],
               layout: Any, budget: int, log: Callable[[str], None]) -> dict[str, list[float]]:
    """Store each conversation (as bench/locomo.py does), answer its first category 1-4 questions."""
    clock = runner.memory.clock
    scores: dict[str, list[float]] = {s: [] for s in systems}
    left = limit
    for conv in convs:
        if left <= 0:
            break
        user = f"locomo-{conv.sample_id}"
        pos: dict[int, int] = {}
        for turn in conv.turns:
            at = turn.at + timedelta(seconds=pos.setdefault(turn.session, 0))
            pos[turn.session] += 1
            clock.set(max(clock.now(), at))
            runner.memory.remember(user, turn.text, role="user", session_id=f"s{turn.session}", at=at)
        clock.advance(timedelta(days=1))
        lines = [f"[{t.at.date().isoformat()}] {t.text}" for t in conv.turns]
        for qa in [q for q in conv.qa if q.category in LOCOMO_CATS and q.answer][:left]:
            left -= 1
            replies = {}
            if "pllm" in systems:
                replies["pllm"] = runner.pllm(user, qa.question, layout)
            if "no_memory" in systems:
                replies["no_memory"] = runner.no_memory(qa.question)
            if "full_context" in systems:
                replies["full_context"] = runner.full_transcript(lines, qa.question, budget)
            for row, reply in replies.items():
                scores[row].append(locomo_f1(reply, qa.answer, qa.category))
            log(f"  locomo c{qa.category} {qa.question!r} gold={qa.answer!r}: " +
                ", ".join(f"{r}={scores[r][-1]:.2f} {replies[r][:60]!r}" for r in replies))
    return scores


def _variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    pairs = [p for p in rest.split(",") if p]
    return name, parse_overrides(pairs)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("path", nargs="?", type=Path, default=DEFAULT_DATA / "locomo" / "locomo10.json")
    p.add_argument("--users", type=int, default=12, help="synthetic users")
    p.add_argument("--seed", type=int, default=7, help="synthetic users' seed (tuning used 1; 7 is held out)")
    p.add_argument("--limit", type=int, default=40, help="synthetic questions at most")
    p.add_argument("--locomo-limit", type=int, default=12, help="LoCoMo questions (categories 1-4); 0 skips LoCoMo")
    p.add_argument("--locomo-budget", type=int, default=3000, help="full-context prompt tokens on LoCoMo")
    p.add_argument("--full-budget", type=int, default=1536, help="full-context prompt tokens, synthetic users")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--variant", action="append", default=[], metavar="NAME:k=v,...",
                   help="another pllm row with PromptLayout overrides, e.g. after:notes_at=after")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"which of {','.join(SYSTEMS)} to run (pllm_model: opt-in, it edits the model)")
    p.add_argument("--cache-dir", default="/tmp/pllm-models", help="converted-model cache")
    p.add_argument("--verbose", action="store_true", help="print every question and verdict (stderr)")
    args = p.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    if bad := set(systems) - set(SYSTEMS):
        sys.exit(f"unknown systems {sorted(bad)}; choose from {', '.join(SYSTEMS)}")
    if args.locomo_limit:
        require(args.path, "LoCoMo (locomo10.json)")
    logging.basicConfig(level=logging.WARNING)
    import bm25s  # noqa: F401 - it sets its own logger to DEBUG on import; quiet it after

    logging.getLogger("bm25s").setLevel(logging.WARNING)

    from agent.prompt import PromptLayout
    from editing import GenerationSettings, LocalModel, RuntimeConfig
    from memory import ManualClock, MemoryConfig, MiniLMEmbedder, utc
    from memory.service import Memory

    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else (lambda s: None)
    layout = PromptLayout()
    layouts = {"pllm": layout} if "pllm" in systems else {}
    for spec in args.variant:
        name, overrides = _variant(spec)
        layouts[f"pllm_{name}"] = PromptLayout(**{**overrides, "experimental": True})
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, repetition_penalty=1.15)
    local = LocalModel.load(RuntimeConfig(cache_dir=args.cache_dir))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pllm-memqa-") as home:
        with Memory(MemoryConfig(home=Path(home)), embedder=MiniLMEmbedder(), clock=ManualClock(utc(2026, 1, 5, 9))) as mem:
            runner = Runner(local, mem, settings, layout.answer_hint, args.full_budget)
            users = make_users(args.users, args.seed)
            synth, _ = run_synthetic(runner, users, layouts, systems, args.limit, log, Path(home) / "model")
            t_synth = time.perf_counter() - t0
            loc: dict[str, list[float]] = {}
            if args.locomo_limit:
                convs = load_locomo(args.path)
                loc = run_locomo(runner, convs, args.locomo_limit, systems, layout, args.locomo_budget, log)
    acc = {row: round(sum(v) / len(v), 4) for row, v in synth.items() if v}
    f1 = {row: round(sum(v) / len(v), 4) for row, v in loc.items() if v}
    n_q = len(next(iter(synth.values()), []))
    print_table(f"synthetic users (seed {args.seed}): reply contains the fact's value — {n_q} questions, {t_synth:.0f} s",
                ["system", "accuracy"], [(row, f"{v:.3f}") for row, v in acc.items()])
    if f1:
        n_l = len(next(iter(loc.values())))
        print_table(f"LoCoMo QA token F1 (Porter) — {n_l} questions, categories 1-4 (5 skipped)",
                    ["system", "F1"], [(row, f"{v:.3f}") for row, v in f1.items()])
    if args.json:
        emit_json({**{row: acc.get(row) for row in SYSTEMS}, "locomo_f1": {row: f1.get(row) for row in SYSTEMS},
                   "variants": {k: v for k, v in acc.items() if k.startswith("pllm_") and k not in SYSTEMS},
                   "edits": {k: round(v, 1) if isinstance(v, float) else v for k, v in runner.edit_report.items()}
                   if "pllm_model" in systems else None,
                   "n_synthetic": n_q, "n_locomo": len(next(iter(loc.values()), [])), "seed": args.seed,
                   "max_new_tokens": args.max_new_tokens, "seconds": round(time.perf_counter() - t0)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
