"""Per-user style adapters kept alive (OPPU, refreshed): the ``adapter_refresh`` handler and its turn watcher.

:class:`AdapterRefresher` is what :data:`agent.stack.MODEL_HANDLERS` registers for ``adapter_refresh`` jobs.
A refresh trains the user's style adapter (:mod:`editing.oppu`, LoRA by default) on the worker's private copy
of the base model and publishes it with the user's knowledge edits as their next adapter version:

* **data** — the user's own turns (as continuation targets after the turns before them), the assistant replies
  whose current rating is a like (``Memory.rate`` / ``PersonalAgent.rate``: targets after the turn before them)
  and question/answer pairs of their *current* facts (superseded and retracted ones are not current; a
  forgotten user has none), plus the anchor examples: general questions with the base model's own answers
  (:mod:`editing.oppu.anchors`), so the adapter leaves general answers as they were;
* **continue or restart** — with a style layer in the published version made on this base, training continues
  from it on the turns recorded (and replies liked) since (``trained_through``) plus a replay sample of the older
  ones; with none, or one made on another base model (stale), it trains from scratch on the whole history;
* **publish** — the style version is stored (:class:`~editing.oppu.store.StyleStore`), then the user's edits
  and the new style layer are published together (concatenated module by module: an exact sum).

The refresher also watches every user turn (:meth:`AdapterRefresher.observe`, called by the worker from the
``adapt`` node; queued, scored on its own thread) and submits a refresh job when

* ``refresh_every`` user turns were recorded since the style layer was trained (0: off), or
* a ``river`` detector (Page-Hinkley, upward) over each turn's negative log-likelihood per token under the
  user's published adapter fires: the user now writes in a way their adapter does not know. The job carries
  ``StyleDrift(user, "perplexity", score)`` (score: the rise of the mean NLL per token).

:meth:`AdapterRefresher.stale_users` lists users whose latest style layer was made on another base model;
:func:`agent.stack.build_stack` queues a refresh for each (the base-model-change trigger).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import torch

from editing.compute import COMPUTE

from agent.policy import Job, JobRejected
from memory.records import StyleDrift

if TYPE_CHECKING:  # pragma: no cover
    from agent.model_level import ModelWorkspace
    from agent.policy import UpdateWorker
    from editing.oppu import AdapterTrainConfig, TrainExample
    from editing.oppu.train import Progress

__all__ = ["AdapterRefresher", "RefreshReport", "page_hinkley", "user_examples"]

log = logging.getLogger(__name__)


def page_hinkley() -> Any:
    """The default style-drift detector: Page-Hinkley on rises of the per-turn NLL (nats per token).

    ``delta`` 0.2 nat of tolerated wander, threshold 6 nats of accumulated excess. Fed the NLLs SmolLM2 gave a
    lightly trained user (their turns ≈ 2.4 nats, then formal turns ≈ 3.6), it fired on the 9th new turn; on
    synthetic stationary streams it fired once per 5000 turns at a turn-to-turn spread of 0.6 nat and 4 times
    at 0.8.
    """
    from river import drift

    return drift.PageHinkley(min_instances=8, delta=0.2, threshold=6.0, mode="up")


def user_examples(memory: Any, user_id: str, since: datetime | None, *,
                  context_turns: int | None = None) -> tuple[list["TrainExample"], list["TrainExample"], datetime | None]:
    """The user's examples split into (new, old) at ``since`` (a ``recorded_at``), and the newest time.

    New: own turns recorded after ``since`` (all of them when ``since`` is None), the replies whose current
    rating is a like given after it, and the current facts' Q/A pairs; old: the own turns and liked replies
    from before (the replay pool). A reply rated up and later down is not trained on.
    """
    from editing.oppu import REFRESH_CONTEXT_TURNS, fact_examples, own_turn_examples, rated_reply_examples
    from memory.feedback import current_ratings

    context_turns = REFRESH_CONTEXT_TURNS if context_turns is None else context_turns
    episodes = [e for e in memory.episodes(user_id) if e.role in ("user", "assistant")]
    ratings = current_ratings(memory.feedback(user_id))
    dialogue = [{"role": e.role, "content": e.text, "feedback": ratings[e.id].value if e.id in ratings else None}
                for e in episodes]
    # (example, when it became training data): one own-turn example per user turn, one per liked reply, in order
    said = [e.recorded_at for e in episodes if e.role == "user" and e.text.strip()]
    liked = [ratings[e.id].recorded_at for e in episodes
             if e.role == "assistant" and e.id in ratings and ratings[e.id].value == 1 and e.text.strip()]
    dated = (list(zip(own_turn_examples(dialogue, context_turns=context_turns), said, strict=True))
             + list(zip(rated_reply_examples(dialogue, context_turns=context_turns), liked, strict=True)))
    new = [ex for ex, t in dated if since is None or t > since]
    old = [ex for ex, t in dated if since is not None and t <= since]
    newest = max((t for _, t in dated), default=None)
    return new + fact_examples(memory.facts(user_id)), old, newest


def _trained_through(current: tuple[int, Any] | None) -> datetime | None:
    """When the newest turn the published style layer was trained on was recorded (None: no layer)."""
    stamp = (current[1].extra or {}).get("trained_through") if current is not None else None
    return datetime.fromisoformat(stamp) if isinstance(stamp, str) else None


@dataclass
class RefreshReport:
    """What one refresh did; ``summary()`` is the job's detail line."""

    user_id: str
    style_version: int | None = None
    published: int | None = None
    n_new: int = 0  # the user's new examples (own turns, liked replies, facts' Q/A)
    n_anchors: int = 0  # anchor examples trained alongside (general questions, the base model's answers)
    n_replayed: int = 0
    continued: bool = False
    steps: int = 0
    loss_first: float = float("nan")
    loss_last: float = float("nan")
    seconds: float = 0.0
    reason: str = ""

    def summary(self) -> str:
        if self.style_version is None:
            return f"no refresh: {self.reason}"
        how = "continued" if self.continued else "from scratch"
        return (f"style adapter v{self.style_version} ({how}: {self.n_new} new examples, {self.n_anchors} anchors, "
                f"{self.n_replayed} replayed, {self.steps} steps, loss {self.loss_first:.2f} → {self.loss_last:.2f}, "
                f"{self.seconds:.1f} s); published adapter v{self.published}")


@dataclass
class _Watch:
    detector: Any
    turns: int  # user turns recorded since the style layer was trained
    nll_sum: float = 0.0  # of the turns the detector has seen (its mean is the "before" of a drift)
    nll_count: int = 0


class AdapterRefresher:
    """The ``adapter_refresh`` handler and the turn watcher that triggers it (see the module docstring).

    ``config``: how the style adapter is trained (default :func:`editing.oppu.refresh_config`; only a LoRA layer
    is published with the edits, so another kind is refused). ``refresh_every``: user turns between automatic refreshes (0: off).
    ``watch_style``: run the perplexity drift detector on every turn. ``min_turns``: own turns a user needs
    before a first style adapter is trained (fewer teach it nothing about how they write). ``anchors``: add the
    anchor examples (general questions with the base model's own answers, :mod:`editing.oppu.anchors`) to every
    refresh, so the adapter leaves general answers as they were.
    """

    def __init__(self, workspace: "ModelWorkspace", config: "AdapterTrainConfig | None" = None, *,
                 refresh_every: int = 50, watch_style: bool = True, min_turns: int = 8,
                 detector_factory: Callable[[], Any] = page_hinkley, anchors: bool = True) -> None:
        from editing.errors import InvalidRequest
        from editing.oppu import refresh_config

        config = config or refresh_config(int(workspace.local.model.config.num_hidden_layers))
        if config.kind != "lora":
            raise InvalidRequest(f"the published adapter combines LoRA layers; a {config.kind} style adapter cannot "
                                 "be published with the edits (train it with editing.oppu.train_adapter instead)")
        if not isinstance(refresh_every, int) or refresh_every < 0:
            raise InvalidRequest(f"refresh_every must be an integer >= 0 (0: off), got {refresh_every!r}")
        self.workspace = workspace
        self.config = config
        self.refresh_every = refresh_every
        self.min_turns = min_turns
        self.watch_style = watch_style
        self.detector_factory = detector_factory
        self.worker: "UpdateWorker | None" = None
        self._watch: dict[str, _Watch] = {}
        self._watch_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, str, datetime] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._in_flight = 0
        self._opened: tuple[Any, Any] | None = None
        self.anchors = anchors
        self._anchor_cache: tuple[str, list["TrainExample"]] | None = None  # (base model id, examples)

    # ------------------------------------------------------------------------------ refreshing

    @property
    def _stores(self) -> tuple[Any, Any]:
        """The home's adapter and style stores, opened once: the adapter store's LRU then serves every turn's
        view without re-reading the version folder."""
        if self._opened is None:
            from agent.model_level import adapter_store, style_store

            home = self.workspace.settings.home
            self._opened = (adapter_store(home), style_store(home))
        return self._opened

    def refresh(self, user_id: str, *, progress: "Progress | None" = None, force: bool = False) -> RefreshReport:
        """Train and publish the user's next style layer; nothing happens without new turns (unless ``force``)."""
        from agent.model_level import published_style

        ws = self.workspace
        report = RefreshReport(user_id)
        with ws.lock:
            model = ws.model
            adapters, styles = self._stores
            current = published_style(adapters, styles, user_id, model.model_id)
            since = _trained_through(current)
            new, old, newest = user_examples(ws.memory, user_id, since)
            new_turns = sum(ex.source == "own_turn" for ex in new)
            new_liked = sum(ex.source == "rated_reply" for ex in new)
            all_turns = new_turns + sum(ex.source == "own_turn" for ex in old)
            if not new and not old:
                report.reason = f"{user_id!r} has no turns or facts to train on"
                return report
            if current is not None and (not new or (not new_turns + new_liked and not force)):
                report.reason = f"no new turns or liked replies since style adapter v{current[0]}"
                return report
            if current is None and all_turns < self.min_turns and not force:
                report.reason = f"{user_id!r} has {all_turns} turns; a first style adapter needs {self.min_turns}"
                return report
            t0 = time.perf_counter()
            from editing.oppu import train_adapter

            anchors = self._anchors(model)
            trained = train_adapter(model.model, model.tokenizer, new + anchors, self.config,
                                    init=current[1] if current else None, replay=old, progress=progress,
                                    base_model_id=model.model_id)
            trained = dataclasses.replace(trained, extra={
                "trained_through": newest.isoformat() if newest else None, "new_turns": new_turns,
                "new_liked_replies": new_liked,
                "previous_version": current[0] if current else None})
            report.style_version = styles.save(user_id, trained)
            report.published = ws.editor.publish(user_id, ws.layers.compose(
                user_id, style=(report.style_version, trained)))
        report.n_anchors = len(anchors)
        report.n_new = trained.n_examples - report.n_anchors
        report.n_replayed, report.continued = trained.n_replayed, trained.continued
        report.steps = len(trained.losses)
        report.loss_first, report.loss_last = trained.losses[0], trained.losses[-1]
        report.seconds = time.perf_counter() - t0
        self._reset_watch(user_id)
        log.info("adapter refresh for %s: %s", user_id, report.summary())
        return report

    def _anchors(self, model: Any) -> list["TrainExample"]:
        """The anchor examples (:mod:`editing.oppu.anchors`) of this base model, generated once per process."""
        from editing.oppu import anchor_examples

        if self._anchor_cache is None or self._anchor_cache[0] != model.model_id:
            self._anchor_cache = (model.model_id, anchor_examples(model.model, model.tokenizer)
                                  if self.anchors else [])
        return self._anchor_cache[1]

    def __call__(self, job: Job) -> str:
        report = self.refresh(job.user_id)
        if report.style_version is None and "no turns" in report.reason:
            raise JobRejected(report.reason)
        return report.summary()

    def stale_users(self) -> list[str]:
        """Users whose latest style layer was made on another base model than the workspace's (to retrain)."""
        _, styles = self._stores
        model_id = self.workspace.local.model_id
        out = []
        for user_id in styles.users():
            latest = styles.latest(user_id)
            if latest is not None and latest.base_model_id != model_id:
                out.append(user_id)
        return out

    # ------------------------------------------------------------------------------ watching turns

    def attach(self, worker: "UpdateWorker") -> None:
        self.worker = worker

    def observe(self, user_id: str, text: str, at: datetime) -> None:
        """Queue one user turn (said at ``at``: the time any job it triggers is created at) for the watcher."""
        if not (self.refresh_every or self.watch_style):
            return
        with self._idle:
            self._in_flight += 1
        self._queue.put((user_id, text, at))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="pllm-style-watcher", daemon=True)
            self._thread.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued turn was scored (False when ``timeout`` passed first)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._watch_turn(*item)
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad turn
                log.exception("the style watcher failed on a turn of %s", item[0])
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    def _reset_watch(self, user_id: str) -> None:
        with self._watch_lock:
            self._watch.pop(user_id, None)

    def _turns_since_training(self, user_id: str) -> int:
        from agent.model_level import published_style

        adapters, styles = self._stores
        since = _trained_through(published_style(adapters, styles, user_id, self.workspace.local.model_id))
        return sum(1 for e in self.workspace.memory.episodes(user_id)
                   if e.role == "user" and (since is None or e.recorded_at > since))

    def turn_nll(self, user_id: str, text: str) -> float:
        """Mean NLL per token of ``text`` as the user's turn under their published adapter (on the private copy)."""
        from editing.hooks import apply_deltas
        from editing.oppu import TrainExample, encode
        from editing.oppu.data import IGNORE

        ws = self.workspace
        with ws.lock:
            model = ws.model
            adapters, _ = self._stores
            view = adapters.view(user_id, base_model_id=model.model_id)
            row = encode(model.tokenizer, TrainExample((), "user", text, "own_turn"), self.config.max_tokens)
            ids = torch.tensor([row.input_ids], device=model.plan.device)  # (1, t)
            labels = torch.tensor([row.labels], device=model.plan.device)  # (1, t)

            def nll() -> float:
                with torch.no_grad(), apply_deltas(model.model, view.deltas if view else ()):
                    logits = model.model(input_ids=ids).logits[:, :-1].float()  # (1, t-1, vocab)
                return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:],
                                                               ignore_index=IGNORE))

            return COMPUTE.call(nll)  # the one thread for model arithmetic (editing.compute says why)

    def _watch_turn(self, user_id: str, text: str, now: datetime) -> None:
        with self._watch_lock:
            state = self._watch.get(user_id)
        if state is None:  # first turn seen in this process: count what is already recorded (this turn included)
            state = _Watch(self.detector_factory(), self._turns_since_training(user_id))
            with self._watch_lock:
                self._watch[user_id] = state
        else:
            state.turns += 1
        jobs: list[Job] = []
        if self.watch_style:
            value = self.turn_nll(user_id, text)
            before = state.nll_sum / state.nll_count if state.nll_count else value
            state.detector.update(value)
            state.nll_sum, state.nll_count = state.nll_sum + value, state.nll_count + 1
            if state.detector.drift_detected:
                drift = StyleDrift(user_id=user_id, statistic="perplexity", score=value - before)
                log.info("style drift for %s: turn NLL %.2f against a mean of %.2f", user_id, value, before)
                jobs.append(Job("adapter_refresh", user_id, (drift,), now))
                state.detector, state.nll_sum, state.nll_count = self.detector_factory(), 0.0, 0
        if self.refresh_every and state.turns >= self.refresh_every:
            jobs.append(Job("adapter_refresh", user_id, (), now,
                            summary=(f"{state.turns} new turns since the style adapter was trained",)))
            state.turns = 0
        if jobs and self.worker is not None:
            self.worker.submit(jobs)  # a refresh already queued for the user absorbs them
