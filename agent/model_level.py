"""Model-level personalization wired into a stack: the knowledge-edit and preference job handlers, the user-data part.

The handlers of a stack share a :class:`ModelWorkspace`: on the first job it makes a *private copy* of the
base model (so a job never blocks a reply or leaks hooks into one) with a
:class:`~editing.personal.KnowledgeEditor` on it. :func:`knowledge_edit_handler` (``knowledge_edit`` jobs)
reconciles the user's active edits with their current facts and publishes the user's adapter — the edits
together with the style adapter and the preference layer of the published version (:class:`UserLayers`;
:mod:`agent.adapter_level` trains the style adapter). :func:`preference_handler` (``preference_weights`` jobs,
planned from ``PreferenceDrift``) reads the user's style weights from memory and publishes the edits and style
with the poles merged by the new weights. The serving side (:class:`~agent.chat_model.PllmChatModel`) reads the
published version on the user's next turn.

Where things live under the home::

    HOME/jobs.sqlite                   the durable job table and the fact-log cursor (agent.jobs)
    HOME/edits.sqlite  HOME/edits/     every user's edits and their tensors (editing.user_edits)
    HOME/adapters/                     every user's published adapter versions (editing.adapters)
    HOME/style/                        every user's style-adapter versions (editing.oppu.store)
    MODEL_CACHE/stats/                 key statistics per base model, shared by homes (editing.stats)
    MODEL_CACHE/poles/                 the DPO pole adapters per base model, shared by homes (editing.alignment)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.policy import Handler, Job, JobRejected

if TYPE_CHECKING:  # pragma: no cover
    from agent.jobs import JobStore
    from agent.settings import Settings
    from editing import LocalModel
    from editing.adapters import AdapterStore
    from editing.alignment import PoleStore
    from editing.oppu.store import StyleStore
    from editing.oppu.train import TrainedAdapter
    from editing.personal import KnowledgeEditor
    from editing.requests import LowRankDelta
    from editing.user_edits import EditRegistry
    from memory.service import Memory

__all__ = ["adapter_store", "edit_registry", "style_store", "pole_store", "published_style", "knowledge_edit_handler",
           "preference_handler", "open_editor", "UserLayers", "ModelWorkspace", "ModelPart"]

log = logging.getLogger(__name__)


def adapter_store(home: Path) -> "AdapterStore":
    from editing.adapters import AdapterStore

    return AdapterStore(Path(home) / "adapters")


def edit_registry(home: Path) -> "EditRegistry":
    from editing.user_edits import EditRegistry

    return EditRegistry(Path(home))


def stats_dir(settings: "Settings") -> Path:
    return (settings.model_cache or settings.home / "models") / "stats"


def style_store(home: Path) -> "StyleStore":
    from editing.oppu.store import StyleStore

    return StyleStore(Path(home) / "style")


def published_style(adapters: "AdapterStore", styles: "StyleStore", user_id: str,
                    base_model_id: str) -> tuple[int, "TrainedAdapter"] | None:
    """The style adapter in the user's published version — (style version, adapter) — or ``None``.

    ``None`` when nothing is published, the published version has no style layer, or that layer was made for
    another base model (it is stale: the next refresh trains from scratch).
    """
    from editing.errors import InvalidRequest

    info = next((v for v in adapters.versions(user_id) if v.published), None)
    number = info.extra.get("style_version") if info is not None else None
    if not isinstance(number, int):
        return None
    try:
        return number, styles.load(user_id, number, base_model_id=base_model_id)
    except InvalidRequest as err:  # StaleAdapter included
        log.info("user %s: style adapter v%d is not usable on %s (%s)", user_id, number, base_model_id, err)
        return None


def pole_store(settings: "Settings") -> "PoleStore":
    """Where the stack's pole adapters live: beside the converted model (``<model cache>/poles``), shared by every
    home on that cache (poles belong to the base model, not to a user)."""
    from editing.alignment import PoleStore

    return PoleStore((settings.model_cache or settings.home / "models") / "poles")


class UserLayers:
    """A user's layers besides their knowledge edits, as one publish combines them (module by module, exactly):

    * **style** — the style adapter of their published version (``style_version``), unless a new one is given;
    * **preference** — their pole adapters merged by their style weights (:mod:`editing.alignment.merge`, PEFT
      ``add_weighted_adapter``, ``combination`` ``cat`` or ``svd``), from the weights recorded in the published
      version unless new ones are given. With ``combination="mod"`` nothing is merged: the record names the poles
      and their weights, and the serving side fuses them at decoding time
      (:class:`~editing.alignment.mod.PoleFusion`); the poles are still loaded once here, so a broken one fails
      the publish as a merge would. A pole not trained for the base model adds nothing (its dimension stays as
      the base model has it) and the record lists it under ``missing_poles`` (``pllm align train``); a trained
      pole that cannot be loaded raises, so nothing is published.

    Calling it (``layers(user_id)``) keeps both layers as published — what a knowledge-edit publish does.
    """

    def __init__(self, model: "LocalModel", settings: "Settings", *, combination: str = "cat") -> None:
        from editing.errors import InvalidRequest

        if combination not in ("cat", "svd", "mod"):
            raise InvalidRequest(f"combination must be 'cat' (exact), 'svd' or 'mod' (fused at decoding time), "
                                 f"got {combination!r}")
        self.model = model
        self.adapters, self.styles = adapter_store(settings.home), style_store(settings.home)
        self.poles = pole_store(settings)
        self.combination = combination
        self._merged: dict[tuple[str, ...], list["LowRankDelta"]] = {}  # (fingerprint, mix) → deltas

    def published_weights(self, user_id: str) -> dict[str, float]:
        """The style weights the user's published version was merged with ({} when none)."""
        info = next((v for v in self.adapters.versions(user_id) if v.published), None)
        pref = info.extra.get("preference") if info is not None else None
        weights = pref.get("weights") if isinstance(pref, dict) else None
        return {str(k): float(v) for k, v in weights.items()} if isinstance(weights, dict) else {}

    def published_preference(self, user_id: str) -> dict[str, Any]:
        """The preference record of the user's published version ({} when none)."""
        info = next((v for v in self.adapters.versions(user_id) if v.published), None)
        pref = info.extra.get("preference") if info is not None else None
        return dict(pref) if isinstance(pref, dict) else {}

    def preference_plan(self, weights: Mapping[str, float]) -> dict[str, Any]:
        """What :meth:`preference` would merge for ``weights`` now, without merging: ``merged`` (the trained
        poles it would use) and ``poles`` (their trained versions' fingerprint, absent when none)."""
        from editing.alignment import pole_from_key, pole_mix

        mix = pole_mix(weights)
        trained = {p.key for p in self.poles.available(self.model.model_id)} if mix else set()
        usable = sorted(k for k in mix if k in trained)
        plan: dict[str, Any] = {"merged": usable}
        if usable:
            plan["poles"] = self.poles.fingerprint(self.model.model_id, [pole_from_key(k) for k in usable])
        return plan

    def preference(self, weights: Mapping[str, float]) -> tuple[list["LowRankDelta"], dict[str, Any]]:
        """The preference layer for ``weights`` (dimension → w) and its record."""
        from editing.alignment import merge_poles, pole_from_key, pole_mix

        mix = pole_mix(weights)
        record: dict[str, Any] = {"weights": {k: float(v) for k, v in weights.items()}, "mix": mix,
                                  "combination": self.combination}
        if not mix:
            return [], record
        base_id = self.model.model_id
        trained = {p.key for p in self.poles.available(base_id)}
        usable = {k: w for k, w in mix.items() if k in trained}
        missing = sorted(k for k in mix if k not in trained)
        if missing:
            record["missing_poles"] = missing
            log.info("style weights %s: poles %s are not trained for %s, their dimensions stay as the base model "
                     "has them (run `pllm align train`)", dict(weights), missing, base_id)
        record["merged"] = sorted(usable)
        if not usable:
            return [], record
        fingerprint = self.poles.fingerprint(base_id, [pole_from_key(k) for k in usable])
        record["poles"] = fingerprint
        key = (fingerprint, self.combination, *(f"{k}={v:.4f}" for k, v in sorted(usable.items())))
        if self.combination == "mod":  # fused when served: check the poles load, publish no deltas
            if key not in self._merged:
                for k in usable:
                    self.poles.load(base_id, pole_from_key(k))
                self._merged[key] = []
            return [], record
        if key not in self._merged:
            if len(self._merged) > 64:
                self._merged.clear()
            self._merged[key] = merge_poles(self.model.model, self.poles, base_id, usable,
                                            combination=self.combination)  # type: ignore[arg-type]
        return list(self._merged[key]), record

    def compose(self, user_id: str, *, style: tuple[int, "TrainedAdapter"] | None = None,
                weights: Mapping[str, float] | None = None) -> tuple[list["LowRankDelta"], dict[str, Any]]:
        """(deltas, record) of the user's style and preference layers; ``style`` / ``weights`` replace the
        published ones."""
        deltas: list["LowRankDelta"] = []
        extra: dict[str, Any] = {}
        found = style if style is not None else published_style(self.adapters, self.styles, user_id,
                                                                  self.model.model_id)
        if found is not None and found[1].kind == "lora":
            deltas += found[1].lora_deltas()
            extra["style_version"] = found[0]
        weights = self.published_weights(user_id) if weights is None else weights
        if weights:
            pref, record = self.preference(weights)
            deltas += pref
            extra["preference"] = record
        return deltas, extra

    def __call__(self, user_id: str) -> tuple[list["LowRankDelta"], dict[str, Any]]:
        return self.compose(user_id)


def open_editor(local: "LocalModel", settings: "Settings", *, private: bool = True) -> "KnowledgeEditor":
    """A knowledge editor for ``settings.home`` on ``local`` (on a private copy of it unless ``private=False``).

    It publishes each user's edits together with their other layers (:class:`UserLayers`: the style adapter and
    the preference layer of their published version, combined as ``settings.style_merge`` says).
    """
    from editing.personal import KnowledgeEditor, private_copy

    model = private_copy(local) if private else local
    return KnowledgeEditor(model, edit_registry(settings.home), adapter_store(settings.home),
                           stats_dir=stats_dir(settings), layers=UserLayers(model, settings,
                                                                            combination=settings.style_merge))


class ModelWorkspace:
    """What a stack's model-level handlers share: one private copy of the base model (made on first use, so
    no job ever blocks a reply or leaks hooks into one) and the knowledge editor on it.

    Jobs run one at a time on the worker thread; anything else that uses the copy (the style watcher) holds
    ``workspace.lock`` as the handlers do.
    """

    def __init__(self, local: "LocalModel", memory: "Memory", settings: "Settings") -> None:
        self.local = local
        self.memory = memory
        self.settings = settings
        self.lock = threading.RLock()
        self._editor: "KnowledgeEditor | None" = None

    @property
    def editor(self) -> "KnowledgeEditor":
        with self.lock:
            if self._editor is None:
                self._editor = open_editor(self.local, self.settings)
            return self._editor

    @property
    def model(self) -> "LocalModel":
        """The private copy of the base model."""
        return self.editor.local

    @property
    def layers(self) -> UserLayers:
        """The editor's :class:`UserLayers` (style and preference layers published with the edits)."""
        layers = self.editor.layers
        assert isinstance(layers, UserLayers)
        return layers


def knowledge_edit_handler(workspace: ModelWorkspace) -> Handler:
    """The ``knowledge_edit`` handler: reconcile the user's edits with their current facts, publish."""

    def handle(job: Job) -> str:
        with workspace.lock:
            report = workspace.editor.sync(job.user_id, workspace.memory.facts(job.user_id))
        if report.rejected and not report.added and not report.retired:
            raise JobRejected(report.summary())
        return report.summary()

    return handle


def preference_handler(workspace: ModelWorkspace) -> Handler:
    """The ``preference_weights`` handler: merge the user's poles by their current style weights, publish.

    Nothing is published when the weights and the trained poles they use equal those of the published version
    (new or retrained poles publish again: ``pllm align train`` queues this job for every user with weights). A pole that cannot be loaded
    (corrupt, or trained on another base) fails the job at once and leaves the published version in place.
    """
    from editing.errors import InvalidRequest

    def handle(job: Job) -> str:
        ws = workspace
        weights = {d: w.weight for d, w in ws.memory.preference_weights(job.user_id).items()}
        with ws.lock:
            layers = ws.layers
            published = layers.published_weights(job.user_id)
            shown = ", ".join(f"{d} {w:+.2f}" for d, w in weights.items())
            if published and all(abs(published.get(d, 0.0) - w) < 1e-4 for d, w in weights.items()):
                # Same weights: publish again only when the poles changed since (trained, or retrained with
                # `pllm align train --force`), so a user merged before a pole existed gets it now.
                record, plan = layers.published_preference(job.user_id), layers.preference_plan(weights)
                if (sorted(record.get("merged", [])), record.get("poles"), record.get("combination")) == \
                        (plan["merged"], plan.get("poles"), layers.combination):
                    return f"style weights unchanged ({shown}); nothing to publish"
            try:
                deltas, extra = layers.compose(job.user_id, weights=weights)
            except InvalidRequest as err:
                raise JobRejected(f"the preference layer could not be merged ({err}); the published adapter "
                                  "is unchanged") from err
            version = ws.editor.publish(job.user_id, (deltas, extra))
        pref = extra.get("preference", {})
        merged = ", ".join(f"{k} × {pref['mix'][k]:.2f}" for k in pref.get("merged", [])) or "none"
        missing = (f"; not trained for this base model: {', '.join(pref['missing_poles'])} (run `pllm align train`)"
                   if pref.get("missing_poles") else "")
        return (f"style weights {shown}; preference layer {merged} ({pref.get('combination')}){missing}; "
                f"published adapter v{version}")

    return handle


class ModelPart:
    """A user's model-level state as a user-data part: edits, adapter versions and jobs.

    ``export`` lists them, style-adapter versions included (tensors are not exported: they belong to one base model and are recomputed from
    the facts); ``import_`` loads nothing — the worker rebuilds the edits from the imported facts on its next
    job; ``forget`` deletes the edits with their tensors, every adapter and style version and the user's jobs.
    """

    name = "model"

    def __init__(self, home: Path, jobs: "JobStore | None" = None) -> None:
        self.home = Path(home)
        self.jobs = jobs

    def export(self, user_id: str) -> dict[str, Any] | None:
        registry = edit_registry(self.home)
        try:
            edits = [r.as_dict() for r in registry.list(user_id)]
        finally:
            registry.close()
        versions = [dataclasses.asdict(v) for v in adapter_store(self.home).versions(user_id)]
        styles = [dataclasses.asdict(v) for v in style_store(self.home).versions(user_id)]
        jobs = [j.as_dict() for j in self.jobs.list(user_id, limit=1000)] if self.jobs is not None else []
        if not (edits or versions or styles or jobs):
            return None
        return {"edits": edits, "adapter_versions": versions, "style_versions": styles, "jobs": jobs}

    def import_(self, data: Any, *, user_id: str) -> int:
        log.info("model-level state of %s is not imported: the update worker recomputes the edits from the "
                 "imported facts on its next job", user_id)
        return 0

    def forget(self, user_id: str) -> dict[str, int]:
        registry = edit_registry(self.home)
        try:
            edits = registry.forget(user_id)
        finally:
            registry.close()
        store = adapter_store(self.home)
        versions = len(store.versions(user_id))
        store.forget(user_id)
        styles = style_store(self.home).forget(user_id)
        jobs = self.jobs.forget(user_id) if self.jobs is not None else 0
        return {"edits": edits, "adapter_versions": versions, "style_versions": styles, "jobs": jobs}
