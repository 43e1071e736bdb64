"""The libvirt driver against libvirt's built-in test driver (``test:///default``):
fast checks of the XML and of idempotence; real QEMU boots are in the acceptance tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from core.compute.virt.libvirt import (
    DomainSpec,
    LibvirtDriver,
    autogroup_nice,
    domain_xml,
    parse_autogroup,
    read_console,
)


def spec(cloud: str = "cloud-a") -> DomainSpec:
    return DomainSpec(str(uuid.uuid4()), "vm", 1, 256, Path("/srv/i/disk"),
                      Path("/srv/i/console.log"), "fa:16:3e:00:00:01", "proj", cloud)


def test_domain_xml_is_tcg_with_a_persistent_console_and_the_cloud_stamp() -> None:
    s = spec()
    root = ET.fromstring(domain_xml(s, "qemu"))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == f"haven-{s.uuid}" and root.findtext("uuid") == s.uuid
    disk = root.find("devices/disk")
    assert disk is not None
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == "/srv/i/disk"  # type: ignore[union-attr]
    serial = root.find("devices/serial/source")
    assert serial is not None and serial.get("append") == "on"
    assert root.find("devices/graphics") is None
    assert "cloud-a" in domain_xml(s, "qemu")


def test_operations_are_idempotent_and_other_clouds_are_invisible() -> None:
    mine, theirs = LibvirtDriver("test:///default", "qemu", "cloud-a"), LibvirtDriver(
        "test:///default", "qemu", "cloud-b")
    s = spec("cloud-a")
    mine.define(s)
    mine.define(s)  # redefining is fine
    mine.start(s.uuid)
    mine.start(s.uuid)  # starting a running domain is a no-op
    assert mine.is_running(s.uuid) and mine.domains() == {s.uuid: True}
    assert s.uuid not in theirs.domains()
    theirs.undefine(s.uuid)  # another cloud cannot touch it
    assert mine.exists(s.uuid)
    mine.reboot(s.uuid, hard=True)
    assert mine.is_running(s.uuid)
    mine.shutdown(s.uuid, timeout=0)
    mine.destroy(s.uuid)  # destroying a stopped domain is a no-op
    assert not mine.is_running(s.uuid)
    mine.undefine(s.uuid)
    mine.undefine(s.uuid)  # and undefining a missing one too
    assert not mine.exists(s.uuid)


def test_console_tail(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert read_console(log, 10) == ""
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_console(log, 2) == "line 98\nline 99\n"
    assert read_console(log, None).count("\n") == 100


@pytest.mark.parametrize(("text", "nice"), [
    ("/autogroup-86097 nice 0\n", 0), ("/autogroup-7 nice -5\n", -5), ("/autogroup-3 nice 19", 19),
    ("", None), ("garbage\n", None), ("/autogroup-1 nice x\n", None)])
def test_parse_autogroup(text: str, nice: int | None) -> None:
    """An empty file (a process in a CPU cgroup of its own, as in a CI container) means no
    autogroup applies, not a crash."""
    assert parse_autogroup(text) == nice


@pytest.mark.parametrize("own_session", [True, False], ids=["session-leader", "not-leader"])
def test_lower_priority_renices_every_thread_and_the_session_group(tmp_path: Path,
                                                                   own_session: bool) -> None:
    """A stand-in QEMU (a real process with two threads; no guest boots in a unit
    test) found through its libvirt pid file: every thread, not just the first, and
    its autogroup when it is alone in its session as libvirt's QEMUs are (a group shared with
    other processes, such as this test's own, is left alone)."""
    import os
    import subprocess
    import sys
    import time

    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); " \
           "time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=own_session)
    mine = autogroup_nice(os.getpid())
    try:
        ident = str(uuid.uuid4())
        for _ in range(100):
            if len(os.listdir(f"/proc/{proc.pid}/task")) >= 2:
                break
            time.sleep(0.05)
        (tmp_path / f"haven-{ident}.pid").write_text(f"{proc.pid}\n")
        driver = LibvirtDriver("test:///default")
        assert driver.lower_priority(ident, 7, run_dir=tmp_path) >= 2
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert all(os.getpriority(os.PRIO_PROCESS, t) == 7 for t in tids)
        if mine is not None:  # the kernel groups by session here
            assert autogroup_nice(proc.pid) == (7 if own_session else mine)
            assert autogroup_nice(os.getpid()) == mine
        assert driver.lower_priority(str(uuid.uuid4()), 7, run_dir=tmp_path) == 0
    finally:
        proc.kill()
        proc.wait()


def test_each_thread_has_a_connection_of_its_own() -> None:
    """libvirtd serves five calls of one connection at a time, and a guest start holds
    one for the whole start: the agent's build workers each need their own."""
    import threading

    driver = LibvirtDriver("test:///default", "qemu", "cloud-a")
    here = driver.conn()
    assert driver.conn() is here  # kept, not reopened
    there: list[object] = []
    worker = threading.Thread(target=lambda: there.append(driver.conn()))
    worker.start()
    worker.join()
    assert there and there[0] is not here
