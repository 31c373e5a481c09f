"""Ray plumbing: connect, start scorer actors, and dispatch blocks to them dynamically.

Dispatch keeps at most ``inflight`` blocks per actor and hands the next block to
whichever actor finishes first, so a slow actor never stalls the others. A block whose
task fails (engine error, dead actor) goes back to the queue until it has failed
``max_retries + 1`` times; then the job stops with a :class:`ScoringError` naming the
block, or, with ``skip_failed``, records it as missing and goes on.

Which block an actor gets next (:class:`AffinityQueue`): blocks carry an affinity group
(pair blocks: their example columns). An actor keeps taking blocks of a group it already
holds, whose example prefixes sit in its engine's prefix cache; when its groups run dry it
takes a group no other actor holds; only when every group is held does it join the group
with the most blocks left, so two engines repeat an example prefix only to balance load.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from delift_ray import metrics
from delift_ray.config import DeliftConfig, RayConfig
from delift_ray.dispatch_policy import Action, Outcome, decide, node_verdict
from delift_ray.errors import DeliftError, EngineStartError, ScoringError, StorageError, engine_start_message, one_line
from delift_ray.scoring.engine import cpu_engine_env

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 120.0  # how long a stopping job waits for its in-flight blocks


def connect(cfg: RayConfig) -> bool:
    """Join a running cluster, or start an embedded local Ray; True if we started it.

    The cluster is ``ray.address``, else ``$RAY_ADDRESS``: Ray sets it for the driver of
    a Ray job (``delift-ray submit``), so a submitted job joins the job's own cluster.
    Joining never passes embedded-cluster arguments (CPUs, object store): Ray refuses
    them for an existing cluster. Without either, ``address="local"`` starts a private
    instance even when a ``ray start`` cluster runs on this machine.
    """
    import ray

    from delift_ray import terminal

    if ray.is_initialized():
        return False
    terminal.quiet_library_loggers()  # Ray's notices at start (token auth) go to the log file
    try:
        return _init(cfg)
    finally:
        terminal.route_worker_output()


def _init(cfg: RayConfig) -> bool:
    import ray

    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=True)
    address = cluster_address(cfg)
    if address:
        check_reachable(address, cfg.connect_timeout_s)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError here
            raise DeliftError(
                f"cannot reach the Ray cluster at {address!r}: {one_line(exc)} "
                "(is it running? with token auth set RAY_AUTH_MODE=token and the cluster's token)"
            ) from None
        return False
    # address="local": always a new embedded instance. Without it ray.init() joins a cluster
    # that `ray start` left on this machine (/tmp/ray/ray_current_cluster) and then fails on
    # num_cpus ("When connecting to an existing cluster, num_cpus ... must not be provided").
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        object_store_memory=cfg.object_store_memory,
        include_dashboard=False,
        **kwargs,
    )
    return True


def cluster_address(cfg: RayConfig) -> str | None:
    """The cluster to join: ``ray.address``, else ``$RAY_ADDRESS``; None for an embedded Ray.

    An http(s) ``$RAY_ADDRESS`` is a Jobs API address (for ``submit``/``status``/``logs``),
    not one a driver can join: refused in one line rather than handed to Ray Client.
    """
    if cfg.address:
        return cfg.address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env.startswith(("http://", "https://")):
        raise DeliftError(
            f"RAY_ADDRESS={env} is a Ray Jobs API address (for submit, status, logs), not a cluster to run on: "
            "unset it to run locally, set --ray.address HOST:6379 to join a cluster, or use `delift-ray submit`"
        )
    return env or None


def address_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) that a Ray address connects to first; None for 'auto' / 'local'."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise DeliftError(f"ray.address {address!r} is not 'auto', HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float) -> None:
    """Fail fast when nothing answers at the address.

    ray.init(address=...) keeps retrying an unreachable GCS for minutes (measured: more
    than 2 minutes for 127.0.0.1:1 with Ray 2.60); a plain TCP connect bounded by
    ``timeout`` answers the common case (wrong host or port, cluster down) at once.
    """
    import socket

    endpoint = address_endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except OSError as exc:
        raise DeliftError(
            f"cannot reach the Ray cluster at {address!r}: nothing answers at {endpoint[0]}:{endpoint[1]} "
            f"within {timeout:g} s ({exc.__class__.__name__}: {exc}); is the cluster running and the address right?"
        ) from None


@dataclass
class ActorPlan:
    count: int
    options: dict
    env: dict


def plan_actors(cfg: DeliftConfig) -> ActorPlan:
    """One scorer per declared accelerator (``ray.accelerator``: GPU or a custom resource),
    spread across nodes; ``ray.num_scorers`` overrides the count; one CPU engine without any.

    Each scorer reserves ``ray.num_gpus_per_scorer`` units of the accelerator, so Ray gives
    it its own device(s) (for GPUs, ``CUDA_VISIBLE_DEVICES``); ``SPREAD`` places the scorers
    on as many nodes as hold one. The environment shipped to the actors carries the S3
    endpoint (not a secret) and never a credential: each node reads its own.
    """
    import ray

    from delift_ray.storage import ENDPOINT_ENV, s3_endpoint

    r = cfg.ray
    units = float(ray.cluster_resources().get(r.accelerator, 0))
    # The pool replaces dead actors itself (ActorGroup.handle_death), so Ray does not restart them too.
    opts: dict[str, Any] = {"num_cpus": r.num_cpus_per_scorer, "max_restarts": 0, "max_task_retries": 0}
    env = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    env.update(cpu_engine_env(cfg.engine))  # VLLM_CPU_* only matter to a CPU build of vLLM
    endpoint = s3_endpoint()
    if endpoint:
        env[ENDPOINT_ENV[0]] = endpoint
    if units > 0:
        per = r.num_gpus_per_scorer
        if r.accelerator == "GPU":
            opts["num_gpus"] = per
        else:
            opts["resources"] = {r.accelerator: per}
        opts["scheduling_strategy"] = "SPREAD"
        count = r.num_scorers or max(1, int(units / max(per, 1e-9)))
    else:
        count = r.num_scorers or 1
        # Ray pins OMP_NUM_THREADS to the reserved CPUs; a CPU engine should use its share of cores.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
    opts["runtime_env"] = {"env_vars": env}
    return ActorPlan(count, opts, env)


@contextmanager
def actor_pool(cfg: DeliftConfig, cls: type, *args, probe_root: Optional[str] = None):
    """An :class:`ActorGroup` of ``cls(*args)`` actors placed like the scorers (:func:`plan_actors`).

    Connects to Ray (or starts a local instance) first; on exit the actors are shut down,
    and a Ray instance started here is stopped. With ``probe_root`` (and
    ``storage.probe``), every actor must see that store and the driver must see what each
    actor wrote there before anything is scored (:meth:`ActorGroup.check_store`).
    """
    import ray

    started = connect(cfg.ray)
    try:
        actors = plan_actors(cfg)
        remote_cls = ray.remote(cls).options(**actors.options)
        probe = StoreProbe.start(probe_root, cfg.ray.accelerator) if probe_root and cfg.storage.probe else None
        pool = None
        try:
            pool = ActorGroup(lambda: remote_cls.remote(*args), actors.count, cfg.ray.max_actor_restarts, probe=probe)
            if probe:
                pool.check_store()
            yield pool
        finally:
            if pool is not None:
                pool.shutdown()
            if probe:
                probe.remove()
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- where actors run


@dataclass
class StoreProbe:
    """The driver's half of the reachability check: ``<root>/_probe/<name>`` holding ``token``."""

    root: str
    name: str
    token: str
    accelerator: str

    @classmethod
    def start(cls, root: str, accelerator: str) -> "StoreProbe":
        import socket
        import uuid

        from delift_ray.storage import absolute_location, write_probe

        root = absolute_location(root)
        token = uuid.uuid4().hex
        probe = cls(root, f"driver-{token[:12]}", token, accelerator)
        err = write_probe(root, probe.name, token)
        if err:
            raise StorageError(f"the store {root} is not writable from the driver on {socket.gethostname()}: {err}")
        return probe

    def remove(self) -> None:
        from delift_ray.storage import remove_probe

        remove_probe(self.root, self.name)


def probe_here(root: str, driver_probe: str, token: str, accelerator: str) -> dict:
    """Run inside an actor: where it runs (node, accelerators), and whether it sees the store.

    It reads the driver's probe, then writes its own ``node-<id>-<pid>`` holding
    ``token:node``; ``error`` is None when both worked.
    """
    import ray

    from delift_ray.storage import read_probe, write_probe

    ctx = ray.get_runtime_context()
    node = ctx.get_node_id()
    name = f"node-{node[:16]}-{os.getpid()}"
    ids = ctx.get_accelerator_ids().get(accelerator, [])
    return {
        "node_id": node,
        "node_ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "accelerator": accelerator,
        "accelerator_ids": [str(i) for i in ids],
        "resources": {k: v for k, v in ctx.get_assigned_resources().items()},
        "probe": name,
        "error": read_probe(root, driver_probe, token) or write_probe(root, name, f"{token}:{node}"),
    }


def node_alive(node_id: str) -> bool:
    import ray

    return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())


@dataclass
class DispatchReport:
    done: list[Any] = field(default_factory=list)
    failed: list[tuple[Any, str]] = field(default_factory=list)
    retries: int = 0
    actor_deaths: int = 0
    redone: int = 0  # units (pairs, samples) of blocks sent again after a failure
    node_losses: int = 0  # nodes lost while they held scorers
    requeued: int = 0  # in-flight blocks sent again because their node was lost (not counted as attempts)


class ActorGroup:
    """A fixed group of actors from one factory (scorers or embedders); a dead actor is replaced by a
    fresh one. (Not Ray's ``ActorPool``: this one owns, replaces and places its actors.)

    Each slot may be replaced ``max_restarts`` times; one more death stops the job. An
    actor lost with its node is not replaced: its slot goes with the node's accelerator,
    and the job goes on with the actors left (a pool never waits for a new node).
    """

    def __init__(
        self, factory: Callable[[], Any], count: int, max_restarts: int, *, probe: Optional[StoreProbe] = None
    ):
        self.factory = factory
        self.max_restarts = max_restarts
        self.probe = probe
        self.records: list[dict] = []  # one per actor ever started: where it ran (see placements())
        self._record_of: dict[int, dict] = {}  # keyed by id(handle): every handle is kept, so ids stay unique
        self._probe_refs: dict[int, Any] = {}
        self._handles: list[Any] = []
        self.lost_nodes: list[str] = []
        self.actors = [self._start(slot) for slot in range(count)]
        self.restarts = [0] * count
        self.retired: list[Any] = []  # actors recycled after a task error

    def _start(self, slot: int) -> Any:
        actor = self.factory()
        self._handles.append(actor)
        rec = {"slot": slot, "node_id": None, "lost": False}
        self.records.append(rec)
        self._record_of[id(actor)] = rec
        if self.probe is not None:
            p = self.probe
            self._probe_refs[id(actor)] = actor.probe.remote(p.root, p.name, p.token, p.accelerator)
        return actor

    def _resolve(self, actor, timeout: Optional[float]) -> dict:
        """The actor's record, with its probe's answer once that has arrived."""
        import ray

        rec = self._record_of.get(id(actor), {})
        ref = self._probe_refs.get(id(actor))
        if ref is None:
            return rec
        try:
            ready, _ = ray.wait([ref], timeout=timeout) if timeout is not None else ([ref], None)
            if ready:
                rec.update(ray.get(ref))
                self._probe_refs.pop(id(actor))
        except Exception:  # the actor died before answering: dispatch sees that death itself
            self._probe_refs.pop(id(actor), None)
        return rec

    def check_store(self) -> None:
        """Fail at once, in one line naming the node and the path, when some scorer cannot
        read the driver's probe or write its own, or the driver cannot read an actor's."""
        from delift_ray.storage import read_probe, remove_probe

        p = self.probe
        for actor in self.actors:
            rec = self._resolve(actor, None)
            if "error" not in rec:
                continue  # died while starting; dispatch replaces it
            where = f"node {rec['node_id']} ({rec['node_ip']})"
            if rec["error"]:
                raise StorageError(f"the store {p.root} is not reachable from {where}: {rec['error']}")
            err = read_probe(p.root, rec["probe"], f"{p.token}:{rec['node_id']}")
            if err:
                raise StorageError(f"the driver cannot see what {where} wrote to the store {p.root}: {err}")
            remove_probe(p.root, rec["probe"])

    def placements(self) -> list[dict]:
        """Where every actor of this pool ran: slot, node id and IP, accelerator ids, and
        whether it was lost with its node. Actors whose probe has not answered are left out."""
        by_id = {id(a): a for a in self._handles}
        for key in [k for k in self._probe_refs if k in by_id]:
            self._resolve(by_id[key], 0)
        keep = ("slot", "node_id", "node_ip", "accelerator", "accelerator_ids", "resources", "pid", "lost")
        return [{k: r.get(k) for k in keep} for r in self.records if r.get("node_id")]

    def lost_node(self, actor, exc: BaseException) -> Optional[str]:
        """The node whose loss killed ``actor``, or None when it died some other way.

        Ray says so in the error ("The actor died because its node has died"); the node's
        state in the GCS confirms it when the message does not.
        """
        return node_verdict(str(exc), self._resolve(actor, 0).get("node_id"), node_alive)

    def retire_lost(self, actor, node: str) -> bool:
        """Drop an actor lost with ``node``; True the first time that node is reported."""
        if actor in self.actors:
            slot = self.actors.index(actor)
            self.actors.pop(slot)
            self.restarts.pop(slot)
        for rec in self.records:
            if rec.get("node_id") == node:
                rec["lost"] = True
        self._record_of.get(id(actor), {})["lost"] = True
        if node in self.lost_nodes:
            return False
        self.lost_nodes.append(node)
        return True

    def handle_death(self, actor) -> Any:
        """Replace ``actor`` unless an earlier failure already did; returns the slot's actor."""
        if actor not in self.actors:
            return None
        slot = self.actors.index(actor)
        self.restarts[slot] += 1
        if self.restarts[slot] > self.max_restarts:
            raise ScoringError(
                f"scorer actor {slot} died {self.restarts[slot]} times (ray.max_actor_restarts={self.max_restarts}); "
                "see the Ray logs for the cause (often memory). Shards already written are kept: re-run to resume."
            )
        self.actors[slot] = self._start(slot)
        return self.actors[slot]

    def recycle(self, actor) -> Any:
        """Replace a live actor whose engine may be unhealthy; not counted as a restart.

        The old handle is kept so that its id is never reused: blocks that fail because
        of this kill are recognised by it (:meth:`was_recycled`).
        """
        import ray

        if actor not in self.actors:
            return None
        slot = self.actors.index(actor)
        self.retired.append(actor)
        ray.kill(actor, no_restart=True)
        self.actors[slot] = self._start(slot)
        return self.actors[slot]

    def was_recycled(self, actor) -> bool:
        return any(a is actor for a in self.retired)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=60)
            except Exception:  # the actor may already be gone
                pass
            ray.kill(a, no_restart=True)
        self.actors = []


def block_group(block) -> Any:
    """A block's affinity group: ``block.group`` where it has one, else None (no affinity)."""
    return getattr(block, "group", None)


class AffinityQueue:
    """Blocks grouped by affinity; ``pop_for(actor)`` prefers the groups the actor holds.

    Within a group blocks leave in plan order; retried blocks rejoin their group's end.
    """

    def __init__(self, blocks: Sequence[Any] = (), key: Callable[[Any], Any] = block_group):
        self.key = key
        self.groups: OrderedDict[Any, deque] = OrderedDict()
        self.held: dict[Any, list] = {}  # actor key -> groups it has taken blocks from, latest last
        self.holders: dict[Any, set] = {}  # group -> actor keys
        self.size = 0
        for b in blocks:
            self.push(b)

    def __len__(self) -> int:
        return self.size

    def push(self, block) -> None:
        self.groups.setdefault(self.key(block), deque()).append(block)
        self.size += 1

    def pop_for(self, actor_key) -> Any:
        if not self.size:
            raise IndexError("pop from an empty AffinityQueue")
        mine = self.held.setdefault(actor_key, [])
        group = next((g for g in reversed(mine) if self.groups.get(g)), None)
        if group is None:
            group = next((g for g, q in self.groups.items() if q and not self.holders.get(g)), None)
        if group is None:  # every group with blocks left is held: share the largest
            group = max((g for g, q in self.groups.items() if q), key=lambda g: len(self.groups[g]))
        if group not in mine:
            mine.append(group)
            self.holders.setdefault(group, set()).add(actor_key)
        q = self.groups[group]
        block = q.popleft()
        if not q:
            del self.groups[group]
        self.size -= 1
        return block

    def forget(self, actor_key) -> None:
        """An actor died: its engine's cache is gone, its groups are free again."""
        for g in self.held.pop(actor_key, []):
            self.holders.get(g, set()).discard(actor_key)


def dispatch(
    pool: ActorGroup,
    blocks: Sequence[Any],
    method: str,
    *,
    max_retries: int,
    skip_failed: bool = False,
    on_done: Callable[[Any, Any], None] = lambda block, result: None,
    inflight: int = 2,
    describe: Callable[[Any], str] = lambda b: str(getattr(b, "key", b)),
) -> DispatchReport:
    """Run ``actor.<method>.remote(block)`` for every block, dynamically, with retries.

    Failure handling:

    * an actor that dies takes every block queued on it down; each goes back to the
      queue and counts one attempt (which of them killed it cannot be told). The actor
      is replaced once, and the death counted once, however many blocks it took along;
    * a block whose task raises (an engine error, non-finite log-probabilities) counts
      one attempt, and its actor is recycled (replaced by a fresh one, not counted as a
      restart): a vLLM engine that produced NaN keeps NaN in its KV-cache memory and
      poisons later requests (measured on the CPU engine), so the retry gets a clean
      engine. Blocks lost only because of that recycling are requeued without counting
      an attempt;
    * an actor lost with its node (the raylet gone: pre-emption, a dead host) is not
      replaced; the blocks it held are requeued without counting an attempt, and the
      job goes on with the actors on the remaining nodes (``node_losses``, ``requeued``);
    * after ``max_retries + 1`` attempts the block is skipped (``skip_failed``) or the
      job stops with a :class:`ScoringError` naming the block, its samples and the ways
      on, after letting the blocks already running finish (their shards are kept).
    """
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    report = DispatchReport()
    queue = AffinityQueue(blocks)
    attempts: dict[int, int] = {}
    running: dict[Any, tuple[Any, Any]] = {}  # ref -> (block, actor)
    load: dict[int, int] = {}  # id(actor) -> its blocks running

    def fill(actor) -> None:
        while queue and load.get(id(actor), 0) < inflight:
            block = queue.pop_for(id(actor))
            ref = getattr(actor, method).remote(block)
            running[ref] = (block, actor)
            load[id(actor)] = load.get(id(actor), 0) + 1

    # After a block is done only its actor has a free slot, so only it is refilled: a sweep
    # over every actor per block would cost O(cluster) per block on the driver. Anything else
    # (a requeue, a retry, a replaced or retired actor) can leave other actors with free slots
    # and the pool changed, so the next round sweeps them all.
    sweep, refill = True, None
    while queue or running:
        if sweep:
            for actor in list(pool.actors):
                fill(actor)
        elif refill is not None:
            fill(refill)
        ready, _ = ray.wait(list(running), num_returns=1)
        ref = ready[0]
        block, actor = running.pop(ref)
        load[id(actor)] -= 1
        # Ray's side: how the task ended (an Outcome), with what the pool does about it.
        node = start = None
        try:
            result = ray.get(ref)
            outcome = Outcome.DONE
        except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
            error = f"scorer actor died ({exc.__class__.__name__})"
            if pool.was_recycled(actor):  # lost to a recycle we caused
                outcome = Outcome.RECYCLED
            elif (node := pool.lost_node(actor, exc)) is not None:
                outcome = Outcome.NODE_LOST
            elif died_starting(exc) and (start := engine_start_message(str(exc))):
                outcome = Outcome.ENGINE_START_FAILED
            else:
                outcome = Outcome.ACTOR_DIED
                queue.forget(id(actor))  # its engine's prefix cache is gone
                new = pool.handle_death(actor)  # None: an earlier failure already replaced it
                if new is not None:
                    report.actor_deaths += 1
                    metrics.actor_died(method)
                    load[id(new)] = 0
        except Exception as exc:  # an error raised inside the block's task
            outcome, error = Outcome.TASK_ERROR, task_error_text(exc)
            queue.forget(id(actor))
            new = pool.recycle(actor)
            if new is not None:
                load[id(new)] = 0

        # The policy's side (delift_ray.dispatch_policy): what happens to the block.
        decision = decide(outcome, attempts.get(id(block), 0), max_retries, skip_failed)
        n = attempts[id(block)] = decision.attempts
        sweep = decision.action is not Action.DONE
        refill = actor
        if decision.action is Action.DONE:
            report.done.append(block)
            metrics.block_done(method, getattr(block, "size", 1))
            on_done(block, result)
        elif outcome is Outcome.ENGINE_START_FAILED:
            raise EngineStartError(start) from None
        elif decision.action is Action.REQUEUE:
            queue.push(block)
            report.redone += getattr(block, "size", 1)
            if outcome is Outcome.NODE_LOST:
                queue.forget(id(actor))
                report.requeued += 1
                if pool.retire_lost(actor, node):
                    report.node_losses += 1
                    metrics.node_lost(method)
                    log.warning(
                        "node %s was lost with a scorer; its blocks go to the %d scorer(s) left", node, len(pool.actors)
                    )
                if not pool.actors:
                    raise ScoringError(
                        f"every scorer's node was lost (nodes {', '.join(pool.lost_nodes)}); shards already "
                        "written are kept: re-run the same command when the cluster is back to resume."
                    )
        elif decision.action is Action.RETRY:
            report.retries += 1
            report.redone += getattr(block, "size", 1)
            metrics.block_retried(method)
            log.warning("block %s failed (%s); retry %d of %d", describe(block), error, n, max_retries)
            queue.push(block)
        elif decision.action is Action.SKIP:
            log.error("block %s failed %d times (%s); going on without it", describe(block), n, error)
            report.failed.append((block, error))
        else:
            # Let the blocks already running finish, so their shards are kept for the resume.
            if running:
                ray.wait(list(running), num_returns=len(running), timeout=DRAIN_TIMEOUT_S)
            raise ScoringError(
                f"block {describe(block)} failed {n} times, last error: {error}. "
                "Shards already written are kept: re-run the same command to resume, "
                "add --scoring.skip-failed-blocks true to finish without these pairs (reported as missing), "
                "or remove these samples from the data."
            )
    return report


def died_starting(exc: BaseException) -> bool:
    """Whether a Ray actor error is the failure of the actor's constructor (engine start)."""
    return bool(getattr(exc, "actor_init_failed", False)) or "raised in its creation task" in str(exc)


def task_error_text(exc: BaseException) -> str:
    """One line for an exception raised inside a remote task (Ray wraps it in RayTaskError)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    # RayTaskError's own text is a remote traceback; its last line names the exception.
    line = text[-1] if cause is exc and len(text) > 1 else (text[0] if text else "")
    hint = ""
    if isinstance(cause, FloatingPointError) or "non-finite" in line:
        hint = (
            " (the model gave NaN/inf for these inputs: check its weights, or, if float16 overflows, "
            "use --engine.dtype bfloat16 or float32)"
        )
    return f"{cause.__class__.__name__}: {line[:300]}{hint}"
