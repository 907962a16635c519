"""Model-level personalization wired into a stack: the knowledge-edit job handler and the user-data part.

The handlers of a stack share a :class:`ModelWorkspace`: on the first job it makes a *private copy* of the
base model (so a job never blocks a reply or leaks hooks into one) with a
:class:`~editing.personal.KnowledgeEditor` on it. :func:`knowledge_edit_handler` (``knowledge_edit`` jobs)
reconciles the user's active edits with their current facts and publishes the user's adapter — the edits
together with the style adapter of the published version (:mod:`agent.adapter_level` trains that one). The
serving side (:class:`~agent.chat_model.PllmChatModel`) reads the published version on the user's next turn.

Where things live under the home::

    HOME/jobs.sqlite                   the durable job table and the fact-log cursor (agent.jobs)
    HOME/edits.sqlite  HOME/edits/     every user's edits and their tensors (editing.user_edits)
    HOME/adapters/                     every user's published adapter versions (editing.adapters)
    HOME/style/                        every user's style-adapter versions (editing.oppu.store)
    MODEL_CACHE/stats/                 key statistics per base model, shared by homes (editing.stats)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.policy import Handler, Job, JobRejected

if TYPE_CHECKING:  # pragma: no cover
    from agent.jobs import JobStore
    from agent.settings import Settings
    from editing import LocalModel
    from editing.adapters import AdapterStore
    from editing.oppu.store import StyleStore
    from editing.oppu.train import TrainedAdapter
    from editing.personal import KnowledgeEditor
    from editing.requests import LowRankDelta
    from editing.user_edits import EditRegistry
    from memory.service import Memory

__all__ = ["adapter_store", "edit_registry", "style_store", "published_style", "knowledge_edit_handler", "open_editor",
           "ModelWorkspace", "ModelPart"]

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


def open_editor(local: "LocalModel", settings: "Settings", *, private: bool = True) -> "KnowledgeEditor":
    """A knowledge editor for ``settings.home`` on ``local`` (on a private copy of it unless ``private=False``).

    It publishes each user's edits together with the style adapter of their published version.
    """
    from editing.personal import KnowledgeEditor, private_copy

    model = private_copy(local) if private else local
    adapters, styles = adapter_store(settings.home), style_store(settings.home)

    def layers(user_id: str) -> tuple[list["LowRankDelta"], dict[str, Any]]:
        found = published_style(adapters, styles, user_id, model.model_id)
        if found is None or found[1].kind != "lora":
            return [], {}
        return found[1].lora_deltas(), {"style_version": found[0]}

    return KnowledgeEditor(model, edit_registry(settings.home), adapters, stats_dir=stats_dir(settings),
                           layers=layers)


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


def knowledge_edit_handler(workspace: ModelWorkspace) -> Handler:
    """The ``knowledge_edit`` handler: reconcile the user's edits with their current facts, publish."""

    def handle(job: Job) -> str:
        with workspace.lock:
            report = workspace.editor.sync(job.user_id, workspace.memory.facts(job.user_id))
        if report.rejected and not report.added and not report.retired:
            raise JobRejected(report.summary())
        return report.summary()

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
