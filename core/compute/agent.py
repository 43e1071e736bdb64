"""The compute agent: one per hypervisor, converging libvirt to the database.

The database says what each instance should be; the agent makes it so with
one idempotent function, :meth:`ComputeAgent.converge`, run for an instance
whenever a bus nudge names it and, for every instance of this host, on each
periodic reconciliation. Whatever happened before (a crash mid-build, a lost
message, a duplicate one) the next run finishes the job exactly once, because
each finishing step is a compare-and-swap on the instance row that also checks
the instance is still on this host.

A guest with a port is started paused and runs only once its port is plugged
(:mod:`core.compute.vifs`: the port is bound to this host, the network agent
reports it ACTIVE); a config drive, when asked for, is built before the domain is
defined. The agent also serves its guests' metadata, one listener per network in
the network's service namespace (:mod:`core.compute.guestdata`).

The reconciliation also sweeps libvirt: a Haven domain whose instance is
deleted, unknown, or recorded on another host (evacuated away while this host
was dead) is destroyed and undefined, never started. Its disk is left alone:
on shared storage the instance's new host is using it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.common.bus import Bus, Subscription
from core.common.bus.base import Message
from core.common.clients import ServiceCallError, ServiceClients
from core.common.config import HavenConfig
from core.common.db import Database, rowcount
from core.common.hostnet import METADATA_ADDRESS, service_namespace
from core.common.private import private_dir
from core.common.settings import cloud_id
from core.common.timeutil import now
from core.compute import guestdata, messages, ports, scheduler, states, vifs
from core.compute.images import ImageCache
from core.compute.metadata.app import MetadataApp
from core.compute.metadata.configdrive import ConfigDriveError
from core.compute.metadata.configdrive import build as build_config_drive
from core.compute.metadata.listener import MetadataListeners
from core.compute.metadata.lookup import CallableLookup
from core.compute.models import ComputeService, Instance, Migration
from core.compute.virt.hostconf import QEMU_USER
from core.compute.virt.libvirt import (
    DomainSpec,
    LibvirtDriver,
    Nic,
    VirtError,
    disk_free_gb,
    read_console,
)
from core.compute.virt.qemuuser import (
    QemuUserError,
    blocked_ancestors,
    create_private,
    give_disk,
    passable_dir,
    qemu_ids,
    run_private,
)

LOG = logging.getLogger(__name__)


class ComputeAgent:
    def __init__(self, cfg: HavenConfig, db: Database, bus: Bus, driver: LibvirtDriver,
                 clients: ServiceClients | None = None) -> None:
        self.cfg = cfg
        self.db = db
        self.bus = bus
        self.driver = driver
        self.host = cfg.compute_host
        self.clients = clients or ServiceClients(cfg)
        self.instances = cfg.instances_path
        self.qemu = qemu_ids()  # no QEMU user: refuse to run guests as anyone else
        self.images = ImageCache(self.instances / "_base", self.clients, self.qemu)
        self.pool = ThreadPoolExecutor(cfg.compute.build_workers,
                                       thread_name_prefix="converge")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscription: Subscription | None = None
        self._awaiting: set[str] = set()  # started paused, a waiter thread on their port
        self._waiters: list[threading.Thread] = []
        lookup = CallableLookup(guestdata.HostLookup(self.clients, db, self.host))
        self.metadata = MetadataListeners(MetadataApp(lookup), METADATA_ADDRESS)

    # ---- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        self.prepare_instances()
        if self.driver.cloud_id is None:
            self.driver.cloud_id = cloud_id(self.db)
        self.register()
        self.reconcile()  # before taking new work: stale domains go first
        self._subscription = self.bus.subscribe(messages.topic(self.host), self.on_message)
        for name, period, fn in (
            ("heartbeat", self.cfg.compute.heartbeat_interval, self.heartbeat),
            ("reconcile", self.cfg.compute.reconcile_interval, self.reconcile),
        ):
            thread = threading.Thread(target=self._every, args=(period, fn),
                                      name=f"agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        LOG.info("compute agent for host %s started", self.host)

    def stop(self) -> None:
        self._stop.set()
        if self._subscription is not None:
            self._subscription.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.pool.shutdown(wait=True, cancel_futures=True)
        for waiter in self._waiters:
            waiter.join(timeout=10)
        self.metadata.stop()

    def _every(self, period: float, fn: Any) -> None:
        while not self._stop.wait(period):
            try:
                fn()
            except Exception:  # a failed round must not end the loop
                LOG.exception("periodic %s failed", getattr(fn, "__name__", fn))

    def prepare_instances(self) -> None:
        """Make the instances directory, passable (not listable) by the QEMU user, and
        the state directory on the way to it when it holds it; refuse to run when
        QEMU could not reach its disks (every guest would fail to start)."""
        state = self.cfg.state_path
        if self.instances.is_relative_to(state):
            private_dir(state)
            passable_dir(state, self.qemu)
        passable_dir(self.instances, self.qemu)
        if self.driver.uri.startswith("qemu:///system"):
            blocked = blocked_ancestors(self.instances, self.qemu)
            if blocked:
                raise QemuUserError(
                    f"QEMU runs as {QEMU_USER} and cannot pass through "
                    f"{', '.join(map(str, blocked))} to reach {self.instances}: give it "
                    "search (x) permission there, or move compute.instances_dir")

    # ---- service row ---------------------------------------------------------------
    def register(self) -> None:
        """Create or refresh this host's service row with its resources."""
        self.prepare_instances()
        info = self.driver.host_info()
        c = self.cfg.compute
        vcpus = c.vcpus or info.vcpus
        memory = c.memory_mb or info.memory_mb
        disk = c.disk_gb or disk_free_gb(self.instances)
        ts = now()

        def unit(sess: Session) -> None:
            row = sess.scalars(select(ComputeService).where(
                ComputeService.host == self.host)).first()
            if row is None:
                row = ComputeService(host=self.host, enabled=True, forced_down=False,
                                     reserved=False, created_at=ts, generation=0,
                                     vcpus_used=0, memory_mb_used=0, disk_gb_used=0)
                sess.add(row)
            row.vcpus, row.memory_mb, row.disk_gb = vcpus, memory, disk
            row.cpu_ratio, row.ram_ratio = c.cpu_allocation_ratio, c.ram_allocation_ratio
            row.reserved_memory_mb = c.reserved_host_memory_mb
            row.hypervisor_type = "QEMU" if c.virt_type == "qemu" else "KVM"
            row.last_seen = row.started_at = row.updated_at = ts
            row.generation = (row.generation or 0) + 1

        self.db.run_in_transaction(unit)

    def heartbeat(self) -> None:
        ts = now()
        self.db.run_in_transaction(lambda s: s.execute(
            update(ComputeService).where(ComputeService.host == self.host)
            .values(last_seen=ts)))

    # ---- bus -------------------------------------------------------------------------
    def on_message(self, message: Message) -> Message | None:
        """The API's messages (:mod:`core.compute.messages`): a nudge queues the
        instance's convergence; a console log request is answered at once."""
        request = messages.parse(message)
        if isinstance(request, messages.ConsoleLogRequest):
            path = self.instances / request.instance_id / "console.log"
            return messages.ConsoleLogReply(read_console(path, request.length)).to_wire()
        if isinstance(request, messages.Nudge):
            self.pool.submit(self.converge_logged, request.instance_id)
        return None

    # ---- reconciliation --------------------------------------------------------------
    def reconcile(self) -> None:
        """Converge every instance of this host, and sweep foreign domains away."""
        def mine(sess: Session) -> list[str]:
            return list(sess.scalars(select(Instance.id).where(
                Instance.host == self.host, Instance.deleted.is_(False))))

        ids = set(self.db.run_in_transaction(mine))
        foreign = [uuid for uuid in self.driver.domains() if uuid not in ids]
        futures = [self.pool.submit(self.converge_logged, i) for i in [*foreign, *ids]]
        for future in futures:
            future.result()
        self._clear_tombstones()
        self.serve_metadata()

    def serve_metadata(self) -> None:
        """One metadata listener per network with an instance on this host, bound in
        the network's service namespace (made by the network agent: a namespace not
        there yet is retried on the next round)."""
        def networks(sess: Session) -> set[str]:
            return {n for n in sess.scalars(select(Instance.network_id).where(
                Instance.host == self.host, Instance.deleted.is_(False),
                Instance.network_id.is_not(None))) if n}

        wanted = {n: service_namespace(n) for n in self.db.run_in_transaction(networks)}
        for network_id, exc in self.metadata.reconcile(wanted).items():
            LOG.info("metadata for network %s not served yet: %s", network_id, exc)

    def _clear_tombstones(self) -> None:
        """Mark the tombstones of instances evacuated away from this host cleaned once
        no domain of theirs is left here (the sweep above undefines any it finds; a
        host that lost its definitions with its power has none to sweep). The
        evacuation controller re-enables a returned host only after this."""
        def unit(sess: Session) -> None:
            stale = list(sess.scalars(select(Migration.instance_id).where(
                Migration.source_host == self.host,
                Migration.status.in_(("accepted", "done")))))
            remaining = set(self.driver.domains())
            clean = [i for i in stale if i not in remaining]
            if clean:
                sess.execute(update(Migration).where(
                    Migration.source_host == self.host, Migration.instance_id.in_(clean),
                    Migration.status.in_(("accepted", "done")))
                    .values(status="source-cleaned", updated_at=now()))
        self.db.run_in_transaction(unit)

    def converge_logged(self, instance_id: str) -> None:
        try:
            self.converge(instance_id)
        except Exception:
            LOG.exception("converging %s failed; the next reconciliation retries", instance_id)

    def _lock(self, instance_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(instance_id, threading.Lock())

    def converge(self, instance_id: str) -> None:
        """Make this host's view of one instance match the database (idempotent)."""
        with self._lock(instance_id):
            inst = self.db.run_in_transaction(lambda s: s.get(Instance, instance_id))
            if inst is None or inst.deleted or inst.host != self.host:
                self._remove_foreign_domain(instance_id, inst)
                return
            task = inst.task_state
            if task == states.DELETING:
                self._delete(inst)
            elif inst.vm_state == states.BUILDING and task in (states.SPAWNING,
                                                                states.SCHEDULING):
                self._spawn(inst, rebuild=False)
            elif task == states.REBUILDING:
                self._spawn(inst, rebuild=True)
            elif task == states.POWERING_OFF:
                self.driver.shutdown(inst.id, self.cfg.compute.shutdown_timeout)
                self._finish(inst, task, vm_state=states.STOPPED, power_state=states.SHUTDOWN)
            elif task == states.POWERING_ON:
                self._ensure_defined(inst)
                self.driver.start(inst.id, self.cfg.compute.guest_nice)
                self._finish(inst, task, vm_state=states.ACTIVE, power_state=states.RUNNING)
            elif task in (states.REBOOTING, states.REBOOTING_HARD):
                self._ensure_defined(inst)
                self.driver.reboot(inst.id, hard=task == states.REBOOTING_HARD,
                                   nice=self.cfg.compute.guest_nice)
                self._finish(inst, task, vm_state=states.ACTIVE, power_state=states.RUNNING)
            elif task is None:
                self._sync_power(inst)

    def _remove_foreign_domain(self, instance_id: str, inst: Instance | None) -> None:
        if not self.driver.exists(instance_id):
            return
        where = "deleted" if inst is None or inst.deleted else f"on host {inst.host}"
        LOG.warning("destroying domain of instance %s here: the instance is %s",
                    instance_id, where)
        self.driver.undefine(instance_id)
        self.db.run_in_transaction(lambda s: s.execute(
            update(Migration).where(Migration.instance_id == instance_id,
                                    Migration.source_host == self.host,
                                    Migration.status.in_(("accepted", "done")))
            .values(status="source-cleaned", updated_at=now())))

    # ---- steps -------------------------------------------------------------------------
    def _finish(self, inst: Instance, from_task: str | None, **values: Any) -> bool:
        """CAS the instance out of ``from_task`` if it is still ours and still in it."""
        def unit(sess: Session) -> bool:
            query = update(Instance).where(Instance.id == inst.id, Instance.host == self.host)
            query = query.where(Instance.task_state == from_task if from_task else
                                Instance.task_state.is_(None))
            return rowcount(sess.execute(query.values(task_state=None, updated_at=now(),
                                                      **values))) == 1

        won = self.db.run_in_transaction(unit)
        if not won:
            LOG.info("instance %s moved on before %s finished; leaving it", inst.id, from_task)
        return won

    def _paths(self, inst: Instance) -> tuple[Path, Path, Path]:
        directory = self.instances / inst.id
        return directory, directory / "disk", directory / "console.log"

    def _spec(self, inst: Instance, nics: tuple[Nic, ...],
              config_drive: Path | None) -> DomainSpec:
        _, disk, console = self._paths(inst)
        return DomainSpec(uuid=inst.id, name=inst.name, vcpus=inst.vcpus,
                          memory_mb=inst.memory_mb, disk_path=disk, console_path=console,
                          mac_address=inst.mac_address, project_id=inst.project_id,
                          cloud_id=self.driver.cloud_id or "", nics=nics,
                          config_drive=config_drive)

    def _config_drive_path(self, inst: Instance) -> Path:
        return self.instances / inst.id / "disk.config"  # Nova's name

    def _ensure_defined(self, inst: Instance) -> None:
        """Define a domain that went missing (its port bound here already)."""
        if self.driver.exists(inst.id):
            return
        nics: tuple[Nic, ...] = ()
        if inst.port_id:
            nics = (vifs.bind(self.clients, inst.port_id, self.host).nic,)
        drive = self._config_drive_path(inst)
        self.driver.define(self._spec(inst, nics, drive if drive.exists() else None))

    def _build_config_drive(self, inst: Instance) -> Path:
        """The instance's config drive, built afresh from the database and the network
        API (on every spawn and rebuild: an evacuated guest's drive is the new host's)."""
        record = self.db.run_in_transaction(lambda s: guestdata.load_record(s, inst.id))
        if record is None:
            raise VirtError(f"instance {inst.id} vanished while its config drive was built")
        path = build_config_drive(guestdata.describe(self.clients, record),
                                  self._config_drive_path(inst))
        give_disk(path, self.qemu)
        return path

    def _spawn(self, inst: Instance, rebuild: bool) -> None:
        task = inst.task_state
        with self._locks_guard:
            if inst.id in self._awaiting:
                return  # started paused; its waiter lets it run or fails it
        directory, disk, console = self._paths(inst)
        try:
            self.db.run_in_transaction(lambda s: s.execute(
                update(Instance).where(Instance.id == inst.id, Instance.host == self.host,
                                       Instance.spawn_started_at.is_(None))
                .values(spawn_started_at=now())))
            passable_dir(directory, self.qemu)
            if not console.exists():  # the QEMU user's, and nobody else's
                create_private(console)
                give_disk(console, self.qemu)
            if not disk.exists():
                if rebuild:
                    raise VirtError(f"disk {disk} of evacuated instance not found on shared "
                                    "storage; refusing to create an empty one")
                self._create_disk(inst, disk)
            port = vifs.bind(self.clients, inst.port_id, self.host) if inst.port_id else None
            drive = None
            if guestdata.wants_config_drive(inst, self.cfg.compute.force_config_drive):
                drive = self._build_config_drive(inst)
            t_define = time.monotonic()
            self.driver.define(self._spec(inst, (port.nic,) if port else (), drive))
            t_start = time.monotonic()
            start = not (rebuild and inst.vm_state == states.STOPPED)
            wait = start and port is not None and self.cfg.compute.vif_plugging_timeout > 0
            if start:
                self.driver.start(inst.id, self.cfg.compute.guest_nice, paused=wait)
            t_started = time.monotonic()
        except (VirtError, ServiceCallError, OSError, subprocess.CalledProcessError,
                ConfigDriveError) as exc:
            LOG.error("spawning %s failed: %s", inst.id, exc)
            self._destroy_paused(inst)
            self._fail(inst, task, f"Build of instance {inst.id} failed: {exc}")
            return
        LOG.info("instance %s defined on %s (define %.2f s, start %.2f s)%s", inst.id,
                 self.host, t_start - t_define, t_started - t_start,
                 ", paused until its port is plugged" if wait else "")
        if wait and port is not None:
            self._await_plugging(inst, task, port, rebuild)
        else:
            self._spawned(inst, task, rebuild, start)

    def _spawned(self, inst: Instance, task: str | None, rebuild: bool, started: bool) -> None:
        """Record the instance built (running, or stopped if it was and is rebuilt)."""
        vm_state = states.ACTIVE if started else states.STOPPED
        power = states.RUNNING if started else states.SHUTDOWN
        if self._finish(inst, task, vm_state=vm_state, power_state=power, launched_at=now()):
            if rebuild:
                self.db.run_in_transaction(lambda s: s.execute(
                    update(Migration).where(Migration.instance_id == inst.id,
                                            Migration.dest_host == self.host,
                                            Migration.status == "accepted")
                    .values(status="done", updated_at=now())))
            LOG.info("instance %s %s on %s", inst.id, "rebuilt" if rebuild else "spawned",
                     self.host)

    def _destroy_paused(self, inst: Instance) -> None:
        """A failed build never leaves its guest paused (and waiting for nobody)."""
        try:
            if self.driver.is_paused(inst.id):
                self.driver.destroy(inst.id)
        except VirtError as exc:
            LOG.error("paused domain of failed build %s not destroyed: %s", inst.id, exc)

    def _still_building(self, instance_id: str, task: str | None) -> bool:
        row = self.db.run_in_transaction(lambda s: s.get(Instance, instance_id))
        return (row is not None and not row.deleted and row.host == self.host
                and row.task_state == task)

    def _await_plugging(self, inst: Instance, task: str | None, port: vifs.BoundPort,
                        rebuild: bool) -> None:
        """Wait for the port in a thread of its own: the build workers and the
        reconciliation go on (an evacuation's twenty guests wait side by side)."""
        thread = threading.Thread(target=self._plug_then_run, args=(inst, task, port, rebuild),
                                  name=f"plug-{inst.id[:8]}", daemon=True)
        with self._locks_guard:
            self._awaiting.add(inst.id)
            self._waiters = [t for t in self._waiters if t.is_alive()] + [thread]
        thread.start()

    def _plug_then_run(self, inst: Instance, task: str | None, port: vifs.BoundPort,
                       rebuild: bool) -> None:
        """Let the paused guest run once its port is plugged. On a timeout with
        ``vif_plugging_is_fatal`` the domain is destroyed and undefined and the instance
        goes to ERROR; otherwise the guest runs unplugged, with a warning. A stopping
        agent or a superseded build (the server deleted) leaves it to the next run."""
        c = self.cfg.compute
        try:
            timeout: vifs.PlugTimeout | None = None
            try:
                vifs.wait_plugged(self.clients, port.id, self.host, c.vif_plugging_timeout,
                                  self._stop, lambda: self._still_building(inst.id, task))
            except vifs.PlugTimeout as exc:
                timeout = exc
            except vifs.Interrupted as exc:
                LOG.info("instance %s: %s", inst.id, exc)
                return
            with self._lock(inst.id):
                if not self._still_building(inst.id, task):
                    return
                if timeout is not None and c.vif_plugging_is_fatal:
                    LOG.error("instance %s: %s; destroying it", inst.id, timeout)
                    self.driver.undefine(inst.id)
                    self._fail(inst, task, f"Build of instance {inst.id} failed: virtual "
                               f"interface creation failed: {timeout}")
                    return
                if timeout is not None:
                    LOG.warning("instance %s: %s; running it anyway (vif_plugging_is_fatal "
                                "is false)", inst.id, timeout)
                try:
                    self.driver.resume(inst.id)
                except VirtError as exc:
                    self._destroy_paused(inst)
                    self._fail(inst, task, f"Build of instance {inst.id} failed: {exc}")
                    return
                self._spawned(inst, task, rebuild, True)
        except Exception:
            LOG.exception("waiting for the port of %s failed; the next reconciliation "
                          "retries", inst.id)
        finally:
            with self._locks_guard:
                self._awaiting.discard(inst.id)

    def _create_disk(self, inst: Instance, disk: Path) -> None:
        base, fmt = self.images.ensure(inst.image_id)
        tmp = disk.with_suffix(".creating")
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(tmp)]
        if inst.root_gb:
            cmd.append(f"{inst.root_gb}G")
        run_private(cmd)  # 0600 from its creation
        give_disk(tmp, self.qemu)
        tmp.rename(disk)

    def _fail(self, inst: Instance, task: str | None, message: str) -> None:
        def unit(sess: Session) -> None:
            row = sess.get(Instance, inst.id)
            if row is None or row.host != self.host or row.task_state != task:
                return
            row.vm_state, row.task_state, row.fault = states.ERROR, None, message[:2000]
            row.updated_at = now()
            if task != states.REBUILDING:
                scheduler.release(sess, row)

        self.db.run_in_transaction(unit)

    def _delete(self, inst: Instance) -> None:
        directory, _, _ = self._paths(inst)
        self.driver.undefine(inst.id)
        shutil.rmtree(directory, ignore_errors=True)
        if inst.port_id:
            ports.delete(self.clients, inst.port_id)  # raises: the next round retries

        def unit(sess: Session) -> None:
            row = sess.get(Instance, inst.id)
            if row is None or row.deleted or row.task_state != states.DELETING:
                return
            scheduler.release(sess, row)
            row.vm_state, row.task_state, row.deleted = states.DELETED, None, True
            row.deleted_at = row.updated_at = now()
            row.power_state = states.NOSTATE

        self.db.run_in_transaction(unit)
        with self._locks_guard:
            self._locks.pop(inst.id, None)
        LOG.info("instance %s deleted from %s", inst.id, self.host)

    def _sync_power(self, inst: Instance) -> None:
        running = self.driver.is_running(inst.id)
        if inst.vm_state == states.ACTIVE and not running:
            LOG.warning("instance %s is not running but should be: marking it stopped",
                        inst.id)
            self._cas_idle(inst, states.ACTIVE, {"vm_state": states.STOPPED,
                                                 "power_state": states.SHUTDOWN})
        elif inst.vm_state == states.STOPPED and running:
            LOG.warning("instance %s runs but should be stopped: stopping it", inst.id)
            self.driver.destroy(inst.id)
        elif running and inst.power_state != states.RUNNING:
            self._cas_idle(inst, inst.vm_state, {"power_state": states.RUNNING})

    def _cas_idle(self, inst: Instance, vm_state: str, values: dict[str, Any]) -> None:
        self.db.run_in_transaction(lambda s: s.execute(
            update(Instance).where(Instance.id == inst.id, Instance.host == self.host,
                                   Instance.vm_state == vm_state,
                                   Instance.task_state.is_(None))
            .values(updated_at=now(), **values)))

