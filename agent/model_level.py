"""Model-level personalization wired into a stack: the knowledge-edit job handler and its user-data part.

:func:`knowledge_edit_handler` is what :data:`agent.stack.MODEL_HANDLERS` registers for ``knowledge_edit``
jobs. It builds, on its first job, a :class:`~editing.personal.KnowledgeEditor` on a *private copy* of the
base model (so computing an edit never blocks a reply or leaks hooks into one), then for each job
reconciles the user's active edits with their current facts and publishes the user's adapter. The
serving side (:class:`~agent.chat_model.PllmChatModel`) reads the published version on the user's next turn.

Where things live under the home::

    HOME/jobs.sqlite                   the durable job table and the fact-log cursor (agent.jobs)
    HOME/edits.sqlite  HOME/edits/     every user's edits and their tensors (editing.user_edits)
    HOME/adapters/                     every user's published adapter versions (editing.adapters)
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
    from editing.personal import KnowledgeEditor
    from editing.user_edits import EditRegistry
    from memory.service import Memory

__all__ = ["adapter_store", "edit_registry", "knowledge_edit_handler", "open_editor", "ModelPart"]

log = logging.getLogger(__name__)


def adapter_store(home: Path) -> "AdapterStore":
    from editing.adapters import AdapterStore

    return AdapterStore(Path(home) / "adapters")


def edit_registry(home: Path) -> "EditRegistry":
    from editing.user_edits import EditRegistry

    return EditRegistry(Path(home))


def stats_dir(settings: "Settings") -> Path:
    return (settings.model_cache or settings.home / "models") / "stats"


def open_editor(local: "LocalModel", settings: "Settings", *, private: bool = True) -> "KnowledgeEditor":
    """A knowledge editor for ``settings.home`` on ``local`` (on a private copy of it unless ``private=False``)."""
    from editing.personal import KnowledgeEditor, private_copy

    model = private_copy(local) if private else local
    return KnowledgeEditor(model, edit_registry(settings.home), adapter_store(settings.home),
                           stats_dir=stats_dir(settings))


def knowledge_edit_handler(local: "LocalModel", memory: "Memory", settings: "Settings") -> Handler:
    """The ``knowledge_edit`` handler: reconcile the user's edits with their current facts, publish."""
    lock = threading.Lock()
    editor: list["KnowledgeEditor"] = []

    def handle(job: Job) -> str:
        with lock:
            if not editor:
                editor.append(open_editor(local, settings))
        report = editor[0].sync(job.user_id, memory.facts(job.user_id))
        if report.rejected and not report.added and not report.retired:
            raise JobRejected(report.summary())
        return report.summary()

    return handle


class ModelPart:
    """A user's model-level state as a user-data part: edits, adapter versions and jobs.

    ``export`` lists them (tensors are not exported: they belong to one base model and are recomputed from
    the facts); ``import_`` loads nothing — the worker rebuilds the edits from the imported facts on its next
    job; ``forget`` deletes the edits with their tensors, every adapter version and the user's jobs.
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
        jobs = [j.as_dict() for j in self.jobs.list(user_id, limit=1000)] if self.jobs is not None else []
        if not (edits or versions or jobs):
            return None
        return {"edits": edits, "adapter_versions": versions, "jobs": jobs}

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
        jobs = self.jobs.forget(user_id) if self.jobs is not None else 0
        return {"edits": edits, "adapter_versions": versions, "jobs": jobs}
