"""Model-update jobs on Ray: ``pllm worker --ray ADDRESS``.

The pllm process keeps everything durable: the home's :class:`~agent.jobs.JobStore` (claim, finish, retry with
backoff, :class:`~agent.policy.JobRejected` failing a job at once) and the fact-log outbox run in the ordinary
:class:`~agent.policy.UpdateWorker`. What it registers there for each kind of :data:`agent.stack.MODEL_HANDLERS`
is a thin proxy (:meth:`RayJobs.handler`): it sends the job to one Ray actor and waits for its detail.

The actor (:class:`ModelJobs`, made a Ray actor by :func:`actor_class` only when needed, so importing this
module never imports ray) runs in its own process, on whichever node Ray places it: it loads the local model
from the same :class:`~agent.settings.Settings` (the same home, which must be shared storage, and the same
model cache), opens the home's memory read-only and builds the same handlers over its own
:class:`~agent.model_level.ModelWorkspace`. It asks for one GPU when the cluster has any, else for CPU only.

A handler's ``JobRejected`` comes back through Ray as a ``RayTaskError``; the proxy unwraps it, so the job still
fails at once with the handler's message. An actor that died raises :class:`ActorGone` (the worker retries the
job with its usual backoff) and the next job starts a fresh actor.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError
from agent.policy import Job, JobRejected

if TYPE_CHECKING:  # pragma: no cover
    from agent.policy import Handler, UpdateWorker
    from agent.settings import Settings

__all__ = ["RAY_ADDRESS_HELP", "INSTALL_HINT", "RayUnavailable", "ActorGone", "Placement", "ModelJobs", "actor_class",
           "connect", "shutdown", "RayJobs"]

log = logging.getLogger(__name__)

RAY_ADDRESS_HELP = ("'local' (a private Ray instance on this machine, stopped on exit), 'auto' (the cluster this "
                    "machine belongs to), HOST:6379 (a head node) or ray://HOST:10001 (Ray Client)")
INSTALL_HINT = "pip install 'pllm[ray]'"
# Set in every Ray process pllm starts and in the actor before it imports the model libraries: no usage stats,
# no hub downloads (models come from the model cache), no telemetry.
_OFFLINE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "ANONYMIZED_TELEMETRY": "False"}


class RayUnavailable(AgentError):
    """Ray is not installed, or the Ray address cannot be reached / a local instance cannot start."""


class ActorGone(AgentError):
    """The model-update actor died (its process or node was lost); the job is retried on a fresh actor."""


@dataclass(frozen=True)
class Placement:
    """Where the actor runs: Ray node id, host name, process id and the device its model is on."""

    node_id: str
    host: str
    pid: int
    device: str

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} on {self.device} (Ray node {self.node_id[:12]})"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"Ray is not installed in this environment ({exc}); install it with `{INSTALL_HINT}`") \
            from exc
    return ray


# ------------------------------------------------------------------------------------------ the actor


class ModelJobs:
    """The Ray actor's body: the model-level handlers of a pllm home, in the actor's own process.

    Built from the pllm process's :class:`~agent.settings.Settings` (as a dict): the model is loaded and the
    handlers made on the first call (:meth:`warm_up` or :meth:`run`), so a failed load is the caller's error.
    Jobs run one at a time (an actor runs one call at a time).
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        for key, value in _OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        self._settings = settings
        self._handlers: dict[str, "Handler"] | None = None
        self._memory: Any = None
        self._placement: Placement | None = None

    def _load(self) -> dict[str, "Handler"]:
        if self._handlers is None:
            from agent.model_level import ModelWorkspace
            from agent.settings import Settings
            from agent.stack import MODEL_HANDLERS
            from editing import LocalModel
            from memory.service import Memory

            s = Settings(**self._settings)
            local = LocalModel.load(s.runtime_config())
            self._memory = Memory(s.memory_config(), read_only=True)
            workspace = ModelWorkspace(local, self._memory, s)
            self._handlers = {kind: factory(workspace) for kind, factory in MODEL_HANDLERS.items()}
            self._placement = Placement(_node_id(), socket.gethostname(), os.getpid(), local.plan.describe())
            log.info("model-update actor ready: %s", self._placement.describe())
        return self._handlers

    def warm_up(self) -> Placement:
        """Load the model and build the handlers now; where they run."""
        self._load()
        assert self._placement is not None
        return self._placement

    def stale_users(self) -> list[str]:
        """Users whose style adapter was made on another base model (the adapter refresher's list)."""
        refresher = self._load().get("adapter_refresh")
        return list(refresher.stale_users()) if hasattr(refresher, "stale_users") else []

    def run(self, job: Job) -> tuple[str, Placement]:
        """Run one job with the handler of its kind: (the handler's detail, where it ran). Exceptions propagate
        (``JobRejected`` included) and reach the caller wrapped in a ``RayTaskError``."""
        handlers = self._load()
        handler = handlers.get(job.kind)
        if handler is None:
            raise JobRejected(f"the model-update actor has no handler for {job.kind}")
        detail = handler(job)
        assert self._placement is not None
        return detail, self._placement

    def close(self) -> None:
        for handler in (self._handlers or {}).values():
            close = getattr(handler, "close", None)
            if callable(close):
                close()
        if self._memory is not None:
            self._memory.close()


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


_actor_lock = threading.Lock()
_actor_cls: Any = None


def actor_class() -> Any:
    """:class:`ModelJobs` as a Ray actor class (made on first use; imports ray)."""
    global _actor_cls
    with _actor_lock:
        if _actor_cls is None:
            ray = _import_ray()
            _actor_cls = ray.remote(ModelJobs)
        return _actor_cls


# ------------------------------------------------------------------------------------------ connecting


def connect(address: str, *, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Join Ray at ``address`` (see :data:`RAY_ADDRESS_HELP`); ``local`` starts a private instance with
    ``num_cpus`` CPUs (default: this machine's) and no dashboard. Nothing is sent outside the cluster (usage
    stats off). Ray's own logs and the actor's output are shown only with ``verbose``.

    Returns True when this call connected (the caller then owns :func:`shutdown`), False when this process was
    already connected. Raises :class:`RayUnavailable` (not installed, cannot start, cannot reach) with what to do.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    for key, value in _OFFLINE_ENV.items():  # inherited by the Ray processes a local start launches
        os.environ.setdefault(key, value)
    address = address.strip()
    if not address:
        raise RayUnavailable(f"empty Ray address; ADDRESS is {RAY_ADDRESS_HELP}")
    quiet: dict[str, Any] = {"logging_level": logging.WARNING if verbose else logging.ERROR,
                             "log_to_driver": verbose}
    what = "start a local Ray instance" if address == "local" else f"reach Ray at {address!r}"
    if address != "local":
        _probe(address)  # ray.init retries an unreachable address for many minutes
    try:
        if address == "local":  # a new instance even when RAY_ADDRESS names a cluster or another one runs here
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
        else:  # an existing cluster: it was started with its own resources and dashboard
            ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError, grpc errors…
        raise RayUnavailable(f"could not {what}: {type(exc).__name__}: {exc} (ADDRESS is {RAY_ADDRESS_HELP})") \
            from exc
    log.info("connected to Ray (%s): %s", address, ray.cluster_resources())
    return True


def _bootstrap_address(address: str) -> str | None:
    """``host:port`` that ``address`` names (``auto``: the cluster this machine belongs to, RAY_ADDRESS included);
    None when it cannot be told (Ray then says why itself)."""
    if address.startswith("ray://"):
        return address[len("ray://"):].split("/", 1)[0]
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - a private helper of Ray: without it, ray.init decides
        found = None if address == "auto" else address
    return str(found) if found else None


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (:class:`RayUnavailable`) when nothing accepts a connection at the address's host and port."""
    target = _bootstrap_address(address)
    if target is None or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise RayUnavailable(f"bad Ray address {address!r}: the port must be a number; ADDRESS is {RAY_ADDRESS_HELP}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        named = f" (from {address!r})" if target != address and not address.startswith("ray://") else ""
        raise RayUnavailable(f"could not reach Ray at {address!r}: nothing answers at {host}:{port}{named} "
                             f"({type(exc).__name__}: {exc}). Is the cluster up (`ray status` on its head node)? "
                             f"ADDRESS is {RAY_ADDRESS_HELP}") from exc


def shutdown() -> None:
    """Leave Ray (a ``local`` instance stops with it); nothing when not connected or not installed."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


# ------------------------------------------------------------------------------------------ the pllm side


class RayJobs:
    """The model-update actor as the pllm process sees it: proxy handlers for the local :class:`UpdateWorker`.

    Call :func:`connect` first. The actor asks for ``num_gpus=1`` when the cluster has a GPU (and the settings do
    not pin the model to the CPU), else ``num_cpus`` (``settings.threads`` or 1: its torch threads). ``warm``:
    load the model now (a failure is raised here, not on the first job). ``ran_on``: job id → :class:`Placement`
    of the recent jobs.
    """

    def __init__(self, settings: "Settings", *, warm: bool = True) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._actor: Any = None
        self.ran_on: OrderedDict[int, Placement] = OrderedDict()
        self.placement: Placement | None = None
        if warm:
            self.warm_up()

    def options(self) -> dict[str, Any]:
        """The resources the actor asks for."""
        ray = _import_ray()
        gpus = float(ray.cluster_resources().get("GPU", 0))
        on_cpu = (self.settings.device or "auto").lower() in ("cpu", "mps")
        opts: dict[str, Any] = {"num_cpus": self.settings.threads or 1}
        if gpus > 0 and not on_cpu:
            opts["num_gpus"] = 1
        return opts

    @property
    def actor(self) -> Any:
        """The actor handle (a fresh actor after one died)."""
        with self._lock:
            if self._actor is None:
                opts = self.options()
                self._actor = actor_class().options(**opts).remote(self.settings.model_dump())
                log.info("started the model-update actor (%s)", ", ".join(f"{k}={v}" for k, v in opts.items()))
            return self._actor

    def _call(self, method: str, *args: Any) -> Any:
        """Call an actor method and wait; unwraps remote errors (see the module docstring)."""
        ray = _import_ray()
        from ray.exceptions import RayActorError, RayTaskError

        actor = self.actor
        try:
            return ray.get(getattr(actor, method).remote(*args))
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            where = f"on {getattr(err, 'ip', None) or 'the actor'} pid {getattr(err, 'pid', '?')}"
            if isinstance(cause, JobRejected):
                raise JobRejected(str(cause)) from None
            if isinstance(cause, BaseException):
                log.debug("the model-update actor failed %s:\n%s", where, err)
                raise cause from None
            raise RuntimeError(f"the model-update actor failed {where}: {err}") from None
        except RayActorError as err:
            with self._lock:
                if self._actor is actor:
                    self._actor = None  # the next call starts a fresh actor
            try:
                ray.kill(actor)  # one that is only unreachable must not keep its resources
            except Exception:  # noqa: BLE001 - already gone
                pass
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ActorGone(f"the model-update actor died before finishing ({type(err).__name__}: {reason}); "
                            "the job is retried on a fresh actor") from None

    def warm_up(self) -> Placement:
        """Load the model in the actor now; where it runs."""
        self.placement = self._call("warm_up")
        assert self.placement is not None
        log.info("model-update jobs run on Ray: %s", self.placement.describe())
        return self.placement

    def stale_users(self) -> list[str]:
        return list(self._call("stale_users"))

    def run(self, job: Job) -> str:
        """Run ``job`` in the actor and return its handler's detail (a proxy handler's body)."""
        detail, placement = self._call("run", job)
        self.placement = placement
        self.ran_on[job.id] = placement
        while len(self.ran_on) > 256:
            self.ran_on.popitem(last=False)
        log.info("job %d (%s for %s) ran on %s", job.id, job.kind, job.user_id, placement.describe())
        return str(detail)

    def handler(self, kind: str) -> "Handler":
        """The proxy handler for ``kind`` (the kind travels with the job)."""

        def via_ray(job: Job) -> str:
            return self.run(job)

        via_ray.__name__ = via_ray.__qualname__ = f"ray_{kind}"
        return via_ray

    def register(self, worker: "UpdateWorker") -> None:
        """Register a proxy on ``worker`` for every kind of :data:`agent.stack.MODEL_HANDLERS`, and queue a
        from-scratch refresh for every user whose style adapter was made on another base model (as
        :func:`agent.stack.register_model_handlers` does).

        A worker that has its ``outbox`` set starts its thread when a ``knowledge_edit`` handler is registered;
        a caller that runs the jobs itself (:meth:`UpdateWorker.run_pending`) sets the outbox afterwards."""
        from agent.stack import MODEL_HANDLERS

        for kind in MODEL_HANDLERS:
            worker.register(kind, self.handler(kind))  # type: ignore[arg-type]
        stale = self.stale_users() if "adapter_refresh" in MODEL_HANDLERS else []
        if stale:  # queued only: the caller runs them (run_pending, or its thread on the next poke)
            assert worker.store is not None
            now = worker.clock.now()
            for user in stale:
                worker.store.add("adapter_refresh", user, ["the base model changed: retrain the style adapter"],
                                 now, coalesce=True)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the actor: its handlers close first unless a job still runs after ``timeout_s`` (that job is cut
        off; the worker that runs next requeues it). Safe when the actor already died."""
        with self._lock:
            actor, self._actor = self._actor, None
        if actor is None:
            return
        try:
            import ray

            ray.get(actor.close.remote(), timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - the actor is going away anyway
            log.debug("the model-update actor did not close cleanly: %s", exc)
        try:
            ray.kill(actor)
        except Exception as exc:  # noqa: BLE001
            log.debug("could not kill the model-update actor: %s", exc)
