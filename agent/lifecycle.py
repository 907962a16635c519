"""One registry of everything that holds a user's data: export, import and forget go through it.

Each :class:`UserDataPart` exports, imports and forgets its own share of a user's data; :class:`UserData`
runs every registered part and assembles one document::

    {"format": "pllm.user.export", "version": 1, "user_id": ..., "exported_at": ..., "pllm_version": ...,
     "parts": {"memory": {...}, "threads": {...}, "store": {...}}}

Parts registered today: ``memory`` (episodes, facts, the graph log, semantic items, summaries — through
``Memory.export/import_/forget``), ``threads`` (the conversation threads of the checkpointer, listed by
the :class:`~agent.threads.ThreadRegistry`: the messages of each session) and, when the stack has a
LangGraph store, ``store`` (the user's namespaces); a stack or :func:`open_user_data` also registers ``model``
(the user's knowledge edits, adapter versions and jobs: :class:`agent.model_level.ModelPart`). A part that has nothing for the user exports ``None`` and is left out of the document.

Failure policy — a part's failure is reported, never skipped: ``export`` fails whole if any part fails;
``forget`` runs every part even when one fails (a failing part must not keep the others from erasing),
then raises :class:`~agent.errors.UserDataError` naming the failed parts with what the others removed;
``import_`` is all-or-nothing: on a failure the parts already imported are forgotten again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent.errors import InvalidDocument, NoUserData, UserDataError
from memory.clock import Clock, SystemClock
from memory.errors import PllmMemoryError, UnknownUser
from memory.portability import EXPORT_FORMAT as MEMORY_EXPORT_FORMAT  # accepted by import_ as the memory part
from memory.validation import check_user_id

if TYPE_CHECKING:  # pragma: no cover
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.store.base import BaseStore

    from agent.settings import Settings
    from agent.threads import ThreadRegistry
    from memory import Embedder
    from memory.service import Memory

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "UserDataPart", "UserData", "MemoryPart", "ThreadsPart", "StorePart",
           "open_user_data"]

log = logging.getLogger(__name__)

EXPORT_FORMAT = "pllm.user.export"
EXPORT_VERSION = 1


@runtime_checkable
class UserDataPart(Protocol):
    """One holder of users' data. ``export`` returns JSON-ready data or ``None`` (nothing stored);
    ``import_`` loads what ``export`` returned under ``user_id`` (refusing a user who already has data
    in this part) and returns how many records it loaded; ``forget`` erases and returns counts by kind."""

    name: str

    def export(self, user_id: str) -> Any | None: ...

    def import_(self, data: Any, *, user_id: str) -> int: ...

    def forget(self, user_id: str) -> dict[str, int]: ...


class UserData:
    """The registry: parts in registration order (import follows it; forget and export visit all)."""

    def __init__(self, parts: Iterable[UserDataPart] = (), *, clock: Clock | None = None,
                 on_close: Sequence[Callable[[], None]] = ()) -> None:
        self._parts: dict[str, UserDataPart] = {}
        self._clock = clock or SystemClock()
        self._on_close = list(on_close)
        for part in parts:
            self.register(part)

    def register(self, part: UserDataPart) -> None:
        if not isinstance(part, UserDataPart):
            raise TypeError(f"{part!r} is not a user-data part: it needs name, export, import_ and forget")
        if part.name in self._parts:
            raise ValueError(f"a part named {part.name!r} is already registered; give the new part another name")
        self._parts[part.name] = part

    @property
    def names(self) -> list[str]:
        return list(self._parts)

    def export(self, user_id: str) -> dict[str, Any]:
        """One document with every part's share of ``user_id``'s data."""
        user_id = check_user_id(user_id)
        parts, failures = {}, {}
        for name, part in self._parts.items():
            try:
                data = part.export(user_id)
            except Exception as exc:  # noqa: BLE001 - collected and raised below, with every failing part
                failures[name] = exc
                continue
            if data is not None:
                parts[name] = data
        if failures:
            raise UserDataError(f"exporting {user_id!r} failed in {_listing(failures)}; nothing was exported",
                                failures=failures, done={}) from next(iter(failures.values()))
        if not parts:
            raise NoUserData(f"nothing is stored about user {user_id!r} (looked in: {', '.join(self._parts)}); "
                             "nothing to export")
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "user_id": user_id,
                "exported_at": self._clock.now().isoformat(), "pllm_version": _pllm_version(), "parts": parts}

    def import_(self, document: Mapping[str, Any], *, user_id: str | None = None) -> dict[str, int]:
        """Load an ``export`` document (under ``user_id`` if given); returns records loaded per part.

        A memory-only document (``Memory.export``'s) is accepted as the ``memory`` part alone."""
        parts = _check_document(document, known=self._parts)
        target = check_user_id(user_id if user_id is not None else document.get("user_id"))
        done: dict[str, int] = {}
        for name, part in self._parts.items():
            if name not in parts:
                continue
            try:
                done[name] = part.import_(parts[name], user_id=target)
            except Exception as exc:
                rolled_back = self._roll_back(done, target)
                raise UserDataError(f"importing {target!r} failed in part {name!r}: {exc}. {rolled_back}",
                                    failures={name: exc}, done={}) from exc
        return done

    def _roll_back(self, done: Mapping[str, int], user_id: str) -> str:
        if not done:
            return "Nothing had been imported."
        failed = []
        for name in done:
            try:
                self._parts[name].forget(user_id)
            except Exception:  # noqa: BLE001 - reported in the message; the import error is the one raised
                log.exception("rolling back the import of %s in part %s failed", user_id, name)
                failed.append(name)
        if failed:
            return f"Rolling back {', '.join(failed)} failed too: forget {user_id!r} before importing again."
        return f"What had been imported ({', '.join(done)}) was removed again."

    def forget(self, user_id: str) -> dict[str, dict[str, int]]:
        """Erase ``user_id`` from every part; returns counts per part (a part with nothing returns zeros)."""
        user_id = check_user_id(user_id)
        removed, failures = {}, {}
        for name, part in self._parts.items():
            try:
                removed[name] = part.forget(user_id)
            except Exception as exc:  # noqa: BLE001 - one failing part must not keep the others from erasing
                log.exception("forgetting %s in part %s failed", user_id, name)
                failures[name] = exc
        if failures:
            raise UserDataError(f"forgetting {user_id!r} failed in {_listing(failures)}; the other parts were "
                                f"erased ({', '.join(removed) or 'none'}). Run forget again once the cause is fixed.",
                                failures=failures, done=removed) from next(iter(failures.values()))
        return removed

    def close(self) -> None:
        """Release what :func:`open_user_data` opened (nothing for a registry built by an agent)."""
        for close in self._on_close:
            close()
        self._on_close.clear()

    def __enter__(self) -> "UserData":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listing(failures: Mapping[str, BaseException]) -> str:
    return "; ".join(f"part {name!r} ({type(exc).__name__}: {exc})" for name, exc in failures.items())


def _pllm_version() -> str:
    try:
        return metadata.version("pllm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_document(document: Any, *, known: Mapping[str, Any]) -> Mapping[str, Any]:
    """The document's parts, after checking everything a part cannot check for itself."""
    if not isinstance(document, Mapping):
        raise InvalidDocument(f"a user export is a JSON object, got {type(document).__name__}")
    if document.get("format") == MEMORY_EXPORT_FORMAT and "memory" in known:
        return {"memory": document}  # a memory-only export (``pllm memory export`` before this registry)
    if document.get("format") != EXPORT_FORMAT:
        raise InvalidDocument(f"not a pllm user export: format {document.get('format')!r}, expected {EXPORT_FORMAT!r} "
                              f"(or a memory export, {MEMORY_EXPORT_FORMAT!r})")
    if document.get("version") != EXPORT_VERSION:
        raise InvalidDocument(f"user export version {document.get('version')!r} is not supported "
                              f"(this pllm reads version {EXPORT_VERSION})")
    parts = document.get("parts")
    if not isinstance(parts, Mapping) or not isinstance(document.get("user_id"), str):
        raise InvalidDocument("a user export needs a 'user_id' string and a 'parts' object")
    try:
        owner = check_user_id(document["user_id"])
    except PllmMemoryError as exc:
        raise InvalidDocument(f"the export's user_id is not valid: {exc}; nothing was imported") from exc
    memory = parts.get("memory")
    if isinstance(memory, Mapping) and memory.get("user_id") != owner:
        raise InvalidDocument(f"the export belongs to {owner!r} but its memory part to {memory.get('user_id')!r}; "
                              "a user export holds one user's data. Nothing was imported")
    unknown = sorted(set(parts) - set(known))
    if unknown:  # importing the rest would silently drop these
        raise InvalidDocument(f"the export has parts this stack does not hold: {', '.join(unknown)} "
                              f"(it holds: {', '.join(known)}); nothing was imported")
    return parts


# ----------------------------------------------------------------------------------------- parts


class MemoryPart:
    """Episodes, facts, the graph log, semantic items and summaries, via the ``Memory`` facade."""

    name = "memory"

    def __init__(self, memory: "Memory") -> None:
        self.memory = memory

    def export(self, user_id: str) -> dict[str, Any] | None:
        try:
            return self.memory.export(user_id)
        except UnknownUser:
            return None

    def import_(self, data: Any, *, user_id: str) -> int:
        return self.memory.import_(data, user_id=user_id)

    def forget(self, user_id: str) -> dict[str, int]:
        return self.memory.forget(user_id)


class ThreadsPart:
    """The user's conversation threads: the checkpointed messages of each session.

    Threads are found through the registry (owner stored with the thread), read and written through a
    minimal graph over pllm's state schema compiled on the same checkpointer (LangGraph's public
    ``get_state``/``update_state``, so any checkpointer works), deleted with ``delete_thread``.
    """

    name = "threads"

    def __init__(self, registry: "ThreadRegistry", checkpointer: "BaseCheckpointSaver") -> None:
        self.registry = registry
        self.checkpointer = checkpointer
        self._graph = _thread_graph(checkpointer)

    def export(self, user_id: str) -> dict[str, Any] | None:
        from langchain_core.messages import messages_to_dict

        sessions = []
        for rec in self.registry.of_user(user_id):
            messages = self._graph.get_state(_config(rec.thread_id)).values.get("messages") or []
            if messages:
                sessions.append({"session_id": rec.session_id, "messages": messages_to_dict(messages)})
        return {"sessions": sessions} if sessions else None

    def import_(self, data: Any, *, user_id: str) -> int:
        sessions = _parse_sessions(data)  # everything is checked before anything is written
        if self.registry.of_user(user_id):
            raise InvalidDocument(f"user {user_id!r} already has conversation threads; forget them first")
        try:
            for session_id, messages in sessions:
                thread_id = self.registry.open_thread(user_id, session_id)
                # As if the graph's last node had written them: the next turn starts afresh from START.
                self._graph.update_state(_config(thread_id), {"messages": messages}, as_node=_LAST_NODE)
        except BaseException:
            self.forget(user_id)  # the user had no threads before: leave none half-imported
            raise
        return sum(len(m) for _, m in sessions)

    def forget(self, user_id: str) -> dict[str, int]:
        records = self.registry.of_user(user_id)
        for rec in records:
            self.checkpointer.delete_thread(rec.thread_id)
        # Only now: if a delete failed, the registry still lists the thread for the next forget.
        self.registry.remove([r.thread_id for r in records])
        return {"threads": len(records)}


_LAST_NODE = "adapt"  # the personal graph's last node (agent.graph.build_graph)


def _thread_graph(checkpointer: "BaseCheckpointSaver") -> Any:
    from langgraph.graph import END, START, StateGraph

    from agent.nodes import MemoryState

    builder = StateGraph(MemoryState)
    builder.add_node(_LAST_NODE, lambda state: {})
    builder.add_edge(START, _LAST_NODE)
    builder.add_edge(_LAST_NODE, END)
    return builder.compile(checkpointer=checkpointer)


def _config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def _parse_sessions(data: Any) -> list[tuple[str, list[Any]]]:
    from langchain_core.messages import messages_from_dict

    if not isinstance(data, Mapping) or not isinstance(data.get("sessions"), list):
        raise InvalidDocument("the 'threads' part needs a 'sessions' list")
    out = []
    for i, session in enumerate(data["sessions"]):
        try:
            session_id = check_user_id(session["session_id"], name="session_id")
            messages = messages_from_dict(session["messages"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidDocument(f"session {i} of the 'threads' part is not valid ({exc}); nothing was imported") from exc
        out.append((session_id, messages))
    return out


class StorePart:
    """The user's items in a LangGraph ``BaseStore`` (e.g. ``memory.ChromaStore``): every namespace under
    ``prefix(user_id)`` (default ``("users", user_id)``). Exported namespaces are relative to the prefix,
    so an import under another user id lands under that user's prefix.

    A store with ``export_namespace``/``import_namespace``/``forget_namespace`` (``ChromaStore``) is used
    through those; any other store through the ``BaseStore`` API (``search``/``put``/``delete``).
    """

    name = "store"
    _PAGE = 500

    def __init__(self, store: "BaseStore", *, prefix: Callable[[str], tuple[str, ...]] = lambda u: ("users", u),
                 name: str = "store") -> None:
        self.store = store
        self.prefix = prefix
        self.name = name
        self._native = all(hasattr(store, m) for m in ("export_namespace", "import_namespace", "forget_namespace"))

    def export(self, user_id: str) -> dict[str, Any] | None:
        prefix = self.prefix(user_id)
        if self._native:
            items = self.store.export_namespace(prefix)  # type: ignore[attr-defined]
            return {"prefix": list(prefix), "native": True, "items": items} if items else None
        items = [{"namespace": list(it.namespace[len(prefix):]), "key": it.key, "value": it.value,
                  "created_at": it.created_at.isoformat(), "updated_at": it.updated_at.isoformat()}
                 for it in self._items(prefix)]
        return {"prefix": list(prefix), "items": items} if items else None

    def import_(self, data: Any, *, user_id: str) -> int:
        if not isinstance(data, Mapping) or not isinstance(data.get("items"), list):
            raise InvalidDocument(f"the {self.name!r} part needs an 'items' list")
        prefix = self.prefix(user_id)
        if next(iter(self._items(prefix, limit=1)), None) is not None:
            raise InvalidDocument(f"user {user_id!r} already has items under {prefix} in the store; forget them first")
        if data.get("native"):
            if not self._native:
                raise InvalidDocument(f"the {self.name!r} part was exported by a ChromaStore; import it into one")
            self.store.import_namespace(data["items"], prefix=prefix)  # type: ignore[attr-defined]
            return len(data["items"])
        puts = []
        for i, item in enumerate(data["items"]):
            try:
                puts.append((prefix + tuple(item["namespace"]), str(item["key"]), dict(item["value"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidDocument(f"item {i} of the {self.name!r} part is not valid ({exc}); nothing was imported") from exc
        try:
            for namespace, key, value in puts:
                self.store.put(namespace, key, value)
        except BaseException:
            self.forget(user_id)  # the prefix was empty before: leave nothing half-imported
            raise
        return len(puts)

    def forget(self, user_id: str) -> dict[str, int]:
        prefix = self.prefix(user_id)
        if self._native:
            return {"store_items": int(self.store.forget_namespace(prefix))}  # type: ignore[attr-defined]
        items = list(self._items(prefix))
        for it in items:
            self.store.delete(it.namespace, it.key)
        return {"store_items": len(items)}

    def _items(self, prefix: tuple[str, ...], *, limit: int | None = None) -> Iterable[Any]:
        offset = 0
        while True:
            page = self.store.search(prefix, limit=limit or self._PAGE, offset=offset)
            yield from page
            if limit is not None or len(page) < self._PAGE:
                return
            offset += len(page)


# ------------------------------------------------------------------------------------- assembly


def user_data_for(memory: "Memory", registry: "ThreadRegistry", checkpointer: "BaseCheckpointSaver", *,
                  store: "BaseStore | None" = None, on_close: Sequence[Callable[[], None]] = ()) -> UserData:
    """The registry of a stack: memory, threads and (if given) the store's user namespaces."""
    parts: list[UserDataPart] = [MemoryPart(memory), ThreadsPart(registry, checkpointer)]
    if store is not None:
        parts.append(StorePart(store))
    return UserData(parts, clock=memory.clock, on_close=on_close)


def open_user_data(settings: "Settings", *, embedder: "Embedder | None" = None, read_only: bool = False) -> UserData:
    """The user-data registry of a pllm home without loading the chat model (for ``pllm memory export/
    import/forget``); close it when done (it is a context manager).

    ``read_only=True`` opens the memory read-only (no writer lock: works while a chat holds the home);
    export works then, import and forget are refused by the memory."""
    from agent.graph import close_checkpointer, open_threads
    from memory.service import Memory

    memory = Memory(settings.memory_config(), embedder=embedder, read_only=read_only)
    try:
        checkpointer, registry = open_threads(settings.home, settings.postgres_url)
    except BaseException:
        memory.close()
        raise
    from agent.jobs import JobStore
    from agent.model_level import ModelPart

    jobs = JobStore.under(settings.home)
    data = user_data_for(memory, registry, checkpointer,
                         on_close=[memory.close, registry.close, lambda: close_checkpointer(checkpointer), jobs.close])
    data.register(ModelPart(settings.home, jobs))
    return data
