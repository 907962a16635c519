"""A user's knowledge edits kept in step with their memory, published as that user's adapter.

:meth:`KnowledgeEditor.sync` reconciles: from the user's **current** facts it derives the edits they call
for (:func:`editing.fact_edits.edit_request_for`, one per slot), compares them with the user's active
edits (:class:`~editing.user_edits.EditRegistry`) and

* computes an edit for each slot whose fact is new or changed — on the editor's model with the user's
  other active edits applied, preserving their keys — and keeps it only if it passes its own check
  (:func:`editing.checks.check_edit`: efficacy on its chat question, locality on neutral prompts);
* retires the edit of a slot whose fact was superseded (replaced by the new one) or retracted (removed);
* publishes the result as a new version of the user's adapter (:class:`~editing.adapters.AdapterStore`),
  together with the user's other layers (``layers``: e.g. their style adapter, concatenated module by module),
  then records it in the registry.

Working from state rather than from events makes a job safe to redo (a crash, a retry, two jobs for one
turn): a second sync with nothing new publishes nothing. An ``undo`` removes one edit and republishes; the
undone fact is never edited again (its row remembers it), and an edit rejected by its check is not retried
until the fact changes.

The editor owns its model: the worker gives it a private copy of the base (see :func:`private_copy`), so
the hooks it sets while computing can never reach a reply being generated for another user.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editing.adapters import AdapterStore
from editing.hooks import apply_deltas
from editing.requests import EditRequest, LowRankDelta
from editing.user_edits import EditRecord, EditRegistry

if TYPE_CHECKING:  # pragma: no cover
    from editing.runtime import LocalModel

__all__ = ["KnowledgeEditor", "Layers", "SyncReport", "private_copy"]

log = logging.getLogger(__name__)

# A user's layers besides their edits, published with them: user id → (deltas, what to record about them).
Layers = Callable[[str], tuple[Sequence[LowRankDelta], Mapping[str, Any]]]


def private_copy(local: "LocalModel") -> "LocalModel":
    """A second :class:`LocalModel` over a deep copy of ``local``'s weights and tokenizer (same id, device).

    Copied under ``local.lock``: a reply being generated holds it while its user's delta hooks are on the
    modules, and a copy taken then would carry those hooks forever.
    """
    from editing.runtime import LocalModel

    with local.lock:
        model, tokenizer = copy.deepcopy(local.model), copy.deepcopy(local.tokenizer)
    hooked = [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        raise RuntimeError(f"the base model has forward hooks on {hooked[:3]}: something applied deltas outside "
                           "LocalModel.lock; refusing to copy them into the editor's model")
    # No prefix cache: the editor's weights change under it, so its entries would go stale.
    return LocalModel(model, tokenizer, model_id=local.model_id, plan=local.plan, source=local.source,
                      prefix_cache_mb=0)


@dataclass
class SyncReport:
    """What one :meth:`KnowledgeEditor.sync` did."""

    user_id: str
    added: list[EditRecord] = field(default_factory=list)
    rejected: list[EditRecord] = field(default_factory=list)
    retired: dict[str, str] = field(default_factory=dict)  # edit id → replaced | removed
    version: int | None = None  # the published adapter version (None: nothing changed)
    seconds: float = 0.0

    def summary(self) -> str:
        if self.version is None and not self.rejected:
            return "up to date: no edit to add or remove"
        parts = [f"{len(self.added)} edit(s) added"]
        if self.retired:
            parts.append(f"{len(self.retired)} retired")
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected by their check ("
                         + "; ".join(f"{r.relation} → {r.target}: {r.note}" for r in self.rejected) + ")")
        if self.version is not None:
            parts.append(f"published adapter v{self.version}")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class KnowledgeEditor:
    """Computes, checks, publishes and undoes one home's knowledge edits on one base model."""

    def __init__(self, local: "LocalModel", registry: EditRegistry, adapters: AdapterStore, *,
                 stats_dir: Path | None = None, method: str | None = None, hparams: Any = None,
                 check: bool = True, clock: Callable[[], datetime] = _now, layers: Layers | None = None) -> None:
        from editing.methods import DEFAULT_METHOD, default_hparams, get_method

        self.local = local
        self.registry = registry
        self.adapters = adapters
        self.method = get_method(method or DEFAULT_METHOD)
        self.hparams = hparams if hparams is not None else (
            default_hparams() if method in (None, DEFAULT_METHOD) else self.method.hparams())
        self.stats_dir = stats_dir
        self.check = check
        self.clock = clock
        self.layers = layers
        self._stats: Any = None
        # The check's neutral answers by the set of edits in place (the "before" of the next edit's check).
        self._neutral: dict[frozenset[str], tuple[str, ...]] = {}

    # ------------------------------------------------------------------------------ helpers

    def _statistics(self) -> Any:
        if self.stats_dir is None:
            return None
        if self._stats is None:
            from editing.stats import SecondMoments

            self._stats = SecondMoments(self.local.model, self.local.tokenizer, model_id=self.local.model_id,
                                        cache_dir=self.stats_dir)
        return self._stats

    def _tensors(self, records: Sequence[EditRecord]) -> tuple[list[LowRankDelta], dict[str, Any]]:
        import torch

        deltas: list[LowRankDelta] = []
        keys: dict[str, list[torch.Tensor]] = {}
        for r in records:
            d, k = self.registry.load_tensors(r)
            deltas.extend(d)
            for module, tensor in k.items():
                keys.setdefault(module, []).append(tensor.reshape(-1, tensor.shape[-1]))
        return deltas, {m: torch.cat(ts) for m, ts in keys.items()}

    def _other_layers(self, user_id: str) -> tuple[list[LowRankDelta], dict[str, Any]]:
        if self.layers is None:
            return [], {}
        deltas, extra = self.layers(user_id)
        return list(deltas), dict(extra)

    def _publish(self, user_id: str, records: Sequence[EditRecord],
                 layers: tuple[Sequence[LowRankDelta], Mapping[str, Any]] | None = None) -> int:
        """Publish the edits ``records`` with the user's other layers (``layers``, else ``self.layers``'s).

        The layers are concatenated module by module (an exact sum, PEFT's ``cat`` combination).
        """
        deltas, _ = self._tensors(records)
        other, extra = (list(layers[0]), dict(layers[1])) if layers is not None else self._other_layers(user_id)
        parts = ["edits"] + [name for name, key in (("style", "style_version"), ("preference", "preference"))
                             if key in extra]
        kind = "knowledge_edits" if len(parts) == 1 else "+".join(parts)
        return self.adapters.publish(user_id, deltas + other, base_model_id=self.local.model_id,
                                     extra={"kind": kind, "edits": [r.id for r in records], **extra})

    def publish(self, user_id: str, layers: tuple[Sequence[LowRankDelta], Mapping[str, Any]] | None = None) -> int:
        """Publish the user's active edits with ``layers`` (deltas, extra record) — e.g. a new style adapter."""
        return self._publish(user_id, self.registry.active(user_id), layers)

    # ------------------------------------------------------------------------------ reconciling

    def wanted(self, user_id: str, facts: Sequence[Any]) -> dict[str, tuple[Any, EditRequest]]:
        """Slot key → (fact, request) for the user's current facts that call for an edit."""
        from editing.fact_edits import edit_request_for

        blocked = {(r.fact_id) for r in self.registry.list(user_id, states=("undone", "rejected"))}
        out: dict[str, tuple[Any, EditRequest]] = {}
        for fact in facts:
            if getattr(fact, "valid_to", None) is not None or fact.id in blocked:
                continue
            request = edit_request_for(fact)
            if request is not None:
                out[request.key] = (fact, request)  # facts come oldest first: the newest of a slot wins
        return out

    def sync(self, user_id: str, facts: Sequence[Any]) -> SyncReport:
        """Bring the user's edits in line with ``facts`` (their current facts) and publish if anything changed."""
        t0 = time.perf_counter()
        report = SyncReport(user_id)
        wanted = self.wanted(user_id, facts)
        active = {r.key: r for r in self.registry.active(user_id)}
        to_add = [(key, fact, req) for key, (fact, req) in wanted.items()
                  if key not in active or active[key].fact_id != fact.id]
        for key, record in active.items():
            if key not in wanted:
                report.retired[record.id] = "removed"
            elif active[key].fact_id != wanted[key][0].id:
                report.retired[record.id] = "replaced"
        if not to_add and not report.retired:
            report.seconds = time.perf_counter() - t0
            return report
        kept = [r for r in active.values() if r.id not in report.retired]
        for key, fact, request in to_add:
            record = self._compute(user_id, fact, request, kept + report.added)
            (report.added if record.state == "active" else report.rejected).append(record)
        final = kept + report.added
        if report.added or report.retired:
            report.version = self._publish(user_id, final)
        # Rows last: a crash before this line leaves the registry as it was, and the redo recomputes.
        self.registry.record([*report.added, *report.rejected], retire=report.retired, now=self.clock())
        report.seconds = time.perf_counter() - t0
        log.info("knowledge edits for %s: %s", user_id, report.summary())
        return report

    def _compute(self, user_id: str, fact: Any, request: EditRequest, prior: Sequence[EditRecord]) -> EditRecord:
        from editing.checks import check_edit

        model, tokenizer = self.local.model, self.local.tokenizer
        edit_id = f"edit_{uuid.uuid4().hex}"  # editing/ does not import memory/: its own id, same shape
        prior_deltas, prior_keys = self._tensors(prior)
        prior_deltas = self._other_layers(user_id)[0] + prior_deltas  # the edit is made (and checked) as served
        t0 = time.perf_counter()
        with apply_deltas(model, prior_deltas):
            (result,) = self.method.compute(model, tokenizer, [request], self.hparams, stats=self._statistics(),
                                            preserve=prior_keys or None)
        seconds = time.perf_counter() - t0
        metrics: dict[str, float] = {**result.metrics, "seconds": seconds}
        state, note = "active", ""
        if self.check:
            in_place = frozenset(r.id for r in prior)
            verdict = check_edit(model, tokenizer, request, list(result.deltas), prior=prior_deltas,
                                 neutral_before=self._neutral.get(in_place))
            self._remember_neutral(in_place, verdict.neutral_before)
            self._remember_neutral(in_place | {edit_id}, verdict.neutral_after)
            metrics.update(efficacy=verdict.efficacy, chat_efficacy=verdict.chat_efficacy, locality=verdict.locality)
            if not verdict.passed:
                state = "rejected"
                note = (f"chat efficacy {verdict.chat_efficacy:.2f}, locality {verdict.locality:.2f} "
                        "(below the check's bar)")
        if state == "active":
            self.registry.save_tensors(user_id, edit_id, result.deltas, result.keys)
        question = request.chat_questions[0] if request.chat_questions else request.text
        return EditRecord(edit_id, user_id, request.key, fact.id, fact.relation, request.target_new, question,
                          self.method.name, state, metrics, note)

    def _remember_neutral(self, edits: frozenset[str], answers: tuple[str, ...]) -> None:
        self._neutral[edits] = answers
        while len(self._neutral) > 256:  # oldest first out
            self._neutral.pop(next(iter(self._neutral)))

    # ------------------------------------------------------------------------------ user commands

    def undo(self, user_id: str, edit_id: str) -> int:
        """Remove one active edit and publish the user's adapter without it; returns the new version."""
        from editing.errors import InvalidRequest

        record = self.registry.get(user_id, edit_id)
        if record.state != "active":
            raise InvalidRequest(f"edit {edit_id} of {user_id!r} is {record.state}, not active: nothing to undo")
        remaining = [r for r in self.registry.active(user_id) if r.id != edit_id]
        version = self._publish(user_id, remaining)
        self.registry.set_state(user_id, edit_id, "undone", self.clock(), note="undone by the user")
        return version

    def forget(self, user_id: str) -> None:
        """Remove the user's edits and adapter versions."""
        self.registry.forget(user_id)
        self.adapters.forget(user_id)
