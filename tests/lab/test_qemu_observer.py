"""The /proc double-run observer (``tests/lab/qemu_observer.py``): its judging on
recorded samples, then the sampler against real QEMU processes on this machine
(no lab, no root: ``qemu-system-x86_64 -machine none`` runs no guest but has a
guest's command line)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.qemu_observer import (
    Double,
    Qemu,
    QemuObserver,
    Record,
    Sample,
    Scanner,
    instances_of,
)

A = "0b5e7c43-6a43-4f5e-9d3c-2f8b1a1e9a01"
B = "6f1d2a55-0c1e-4b7b-8a55-3d9a2c4e7b02"

# A QEMU command line as libvirt 9.0 writes it for a Haven domain (trimmed).
LIBVIRT_ARGV = [
    "/usr/bin/qemu-system-x86_64", "-name", f"guest=haven-{A},debug-threads=on", "-S",
    "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw","file":'
    f'"/var/lib/libvirt/qemu/domain-3-haven-{A}/master-key.aes"}}',
    "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off", "-accel", "tcg",
    "-m", "256", "-uuid", A, "-no-user-config", "-nodefaults",
    "-blockdev", '{"driver":"file","filename":"/var/lib/haven-lab/stack/shared/instances/'
    f'{A}/disk","node-name":"libvirt-2-storage","auto-read-only":true}}',
    "-chardev", f"file,id=charserial0,path=/var/lib/haven-lab/stack/shared/instances/{A}/"
    "console.log,append=on",
]


def q(pid: int, *instances: str, node: str = "node1", stopped: bool = False) -> Qemu:
    return Qemu(pid, pid * 10, frozenset(instances), node, stopped)


# ---- reading a command line ----------------------------------------------------------
def test_a_libvirt_command_line_names_its_instance_three_ways() -> None:
    assert instances_of(LIBVIRT_ARGV) == {A}
    # Each way alone is enough.
    assert instances_of(["qemu-system-x86_64", "-uuid", A.upper()]) == {A}
    assert instances_of(["/usr/bin/qemu-system-x86_64", "-name", f"guest=haven-{A}"]) == {A}
    assert instances_of(["qemu-system-x86_64", "-drive", f"file=/srv/i/{A}/disk,if=virtio"]) \
        == {A}


def test_a_copy_under_another_name_still_counts_as_the_instance_of_its_disk() -> None:
    copy = ["qemu-system-x86_64", "-name", "guest=intruder", "-uuid", B,
            "-blockdev", f'{{"filename":"/x/instances/{A}/disk"}}']
    assert instances_of(copy) == {A, B}


def test_what_is_not_a_guest_of_haven_is_not_counted() -> None:
    assert instances_of([]) == frozenset()
    assert instances_of(["/usr/sbin/libvirtd", "-uuid", A]) == frozenset()  # not a QEMU
    assert instances_of(["qemu-img", "info", f"/x/{A}/disk"]) == frozenset()
    assert instances_of(["qemu-system-x86_64", "-name", "guest=other"]) == frozenset()
    assert instances_of(["qemu-system-x86_64", "-drive", f"file=/x/{A}/disk.orig"]) \
        == frozenset()


# ---- judging recorded samples ----------------------------------------------------------
def test_an_evacuation_without_overlap_is_clean_and_its_lives_are_ordered() -> None:
    record = Record()
    record.add(Sample(1.0, (q(100, A), q(101, B))))
    record.add(Sample(1.1, (q(100, A, stopped=True), q(101, B, stopped=True))))  # frozen
    record.add(Sample(1.2, ()))  # fenced: gone
    record.add(Sample(1.3, (q(200, A, node="node2"),)))
    record.add(Sample(1.4, (q(200, A, node="node2"), q(201, B, node="node3"))))
    record.assert_no_double()
    old, new = record.of(A)
    assert (old.node, old.first_seen, old.last_seen, old.seen_stopped) == ("node1", 1.0, 1.1,
                                                                          True)
    assert (new.node, new.first_seen, new.last_seen) == ("node2", 1.3, 1.4)
    assert [life.pid for life in record.of(B)] == [101, 201]
    assert record.samples == 5 and record.longest_gap == pytest.approx(0.1)


def test_two_qemus_of_one_instance_in_one_sample_fail_with_the_sample() -> None:
    record = Record()
    record.add(Sample(5.0, (q(100, A, stopped=True), q(101, B))))
    found = record.add(Sample(5.1, (q(100, A, stopped=True), q(101, B),
                                    q(300, A, node="node2"))))
    assert found == [Double(5.1, A, (q(100, A, stopped=True), q(300, A, node="node2")))]
    with pytest.raises(AssertionError, match=rf"instance {A} run twice .*pid 100 on node1 "
                       r"\(stopped\), pid 300 on node2"):
        record.assert_no_double()


def test_a_double_through_the_disk_alone_is_a_double() -> None:
    record = Record()
    record.add(Sample(1.0, (q(100, A), q(101, A, B))))
    assert [d.instance for d in record.doubles] == [A]


def test_one_process_seen_many_times_is_one_life_and_no_double() -> None:
    record = Record()
    for i in range(10):
        record.add(Sample(float(i), (q(100, A), q(101, B))))
    record.assert_no_double()
    assert len(record.of(A)) == 1 and record.of(A)[0].last_seen == 9.0


def test_a_planted_double_is_kept_apart_and_any_other_still_fails() -> None:
    record = Record(planted={B})
    record.add(Sample(1.0, (q(100, B), q(101, B, node="node2"))))
    record.assert_no_double()
    assert [d.instance for d in record.planted_doubles] == [B]
    record.add(Sample(1.1, (q(100, B), q(101, B, node="node2"), q(102, A), q(103, A))))
    assert [d.instance for d in record.doubles] == [A]


def test_no_sample_is_no_proof() -> None:
    with pytest.raises(AssertionError, match="no sample"):
        Record().assert_no_double()


# ---- real processes --------------------------------------------------------------------
QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64")


@contextlib.contextmanager
def fake_guest(instance: str, name: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A real QEMU whose command line is a guest's, running no guest (-machine none -S)."""
    assert QEMU is not None
    argv = [QEMU, "-machine", "none", "-S", "-nodefaults", "-display", "none",
            "-name", f"guest={name or 'haven-' + instance}", "-uuid", instance]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def seen(observer: QemuObserver, instance: str, count: int) -> Record:
    """Wait until the observer's newest sample shows ``count`` QEMUs of ``instance``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = observer.snapshot()
        lives = [life for life in record.of(instance) if life.last_seen == record.last_at]
        if len(lives) == count:
            return record
        time.sleep(0.05)
    raise AssertionError(f"the observer never saw {count} QEMU(s) of {instance}")


@needs_qemu
def test_the_observer_sees_real_qemus_and_catches_a_second_one() -> None:
    instance = str(uuid.uuid4())
    with QemuObserver(lambda _pid: "here", interval=0.05) as observer, fake_guest(instance):
        seen(observer, instance, 1)
        assert not observer.snapshot().doubles
        with fake_guest(instance, name="intruder"):  # same uuid, another name
            record = seen(observer, instance, 2)
    assert record.doubles and record.doubles[0].instance == instance
    assert {q.node for q in record.doubles[0].qemus} == {"here"}


@needs_qemu
def test_a_stopped_qemu_is_still_seen_and_marked_stopped(tmp_path: Path) -> None:
    instance = str(uuid.uuid4())
    with fake_guest(instance) as guest:
        os.kill(guest.pid, signal.SIGSTOP)
        try:
            scanner = Scanner(lambda _pid: "frozen")
            mine = [x for x in scanner.scan().qemus if x.pid == guest.pid]
            assert [(x.instances, x.stopped) for x in mine] == [(frozenset({instance}), True)]
            # A second pass (cached) sees the same.
            assert [x.pid for x in scanner.scan().qemus if instance in x.instances] \
                == [guest.pid]
        finally:
            os.kill(guest.pid, signal.SIGCONT)
        guest.kill()
        guest.wait(timeout=30)
        assert not [x for x in scanner.scan().qemus if instance in x.instances]


@needs_qemu
def test_a_qemu_first_seen_on_no_known_node_is_placed_once_its_node_is_known() -> None:
    """A QEMU that starts on a rebooted node before the lab state names that node's new
    init is "?" at first sight; the observer must place it once it can, not keep "?"
    for the QEMU's life (running_on(node) would never list it)."""
    from tests.lab.qemu_observer import Scanner
    known = {"yet": False}
    scanner = Scanner(lambda _pid: "node1" if known["yet"] else "?")
    instance = str(uuid.uuid4())
    with fake_guest(instance):
        first = [q for q in scanner.scan().qemus if instance in q.instances]
        assert [q.node for q in first] == ["?"]
        known["yet"] = True
        later = [q for q in scanner.scan().qemus if instance in q.instances]
        assert [q.node for q in later] == ["node1"]
