"""Kernel-style modules in a running uscstd: lsmod/insmod/rmmod through
uscstadmin, module references (-EBUSY naming the holder), the tutorial's
vdisk_pattern example step by step (docs/guide/writing-a-module.md), and
modules that fail: an init returning an error, an exec that raises, a
use-after-free caught by slab poisoning. Real uscstd, real uscstadmin, real
libiscsi tools and qemu-img."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from uscstd_support import uscstadmin_ok, uscstadmin_run

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "vdisk_pattern.py"
BLOCK = 512


@pytest.fixture
def target(uscstd, tmp_path: Path):
    """The default target (LUN 0 on a 64 MiB file) with a control socket."""
    ctl = str(tmp_path / "ctl.sock")
    srv = uscstd("--control", ctl)
    srv.ctl = ctl
    return srv


def lun_url(srv, lun: int) -> str:
    return f"iscsi://{srv.portal}/{srv.iqn}/{lun}"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


def lsmod(srv) -> dict[str, tuple[int, str]]:
    rows = uscstadmin_ok(srv.ctl, "lsmod").splitlines()[1:]
    out = {}
    for row in rows:
        m = re.match(r"(\S+)\s+(\d+)\s+(\d+)\s*(.*)$", row)
        assert m, row
        out[m.group(1)] = (int(m.group(3)), m.group(4))
    return out


def pattern(lba: int, seed: int) -> bytes:
    return (lba.to_bytes(8, "big") + seed.to_bytes(8, "big")) * (BLOCK // 16)


def read_lun(srv, lun: int, dest: Path) -> bytes:
    need("qemu-img")
    r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", lun_url(srv, lun),
                        str(dest)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return dest.read_bytes()


def edited(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the example with one edit, under the same module name."""
    d = tmp_path / f"edit{len(list(tmp_path.glob('edit*')))}"
    d.mkdir()
    text = EXAMPLE.read_text()
    assert old in text
    (d / "vdisk_pattern.py").write_text(text.replace(old, new))
    return d / "vdisk_pattern.py"


def test_lsmod_on_the_default_target_lists_scst_vdisk_iscsi_with_refcounts(target) -> None:
    mods = lsmod(target)
    assert list(mods)[:3] == ["iscsi_scst", "scst_vdisk", "scst"]   # last loaded first
    assert mods["iscsi_scst"] == (1, f"target {target.iqn}")
    assert mods["scst_vdisk"] == (1, f"LUN 0 of {target.iqn}")
    refs, users = mods["scst"]
    assert set(users.split(",")) == {"scst_vdisk", "iscsi_scst"} and refs >= 2


def test_rmmod_scst_vdisk_with_a_lun_mapped_is_refused_naming_the_holder(target) -> None:
    r = uscstadmin_run(target.ctl, "rmmod", "scst_vdisk")
    assert r.returncode == 1
    assert r.stderr.strip() == (f"uscstadmin: -EBUSY: scst_vdisk: module is in use by LUN 0 of "
                                f"{target.iqn} (refcount 1)")
    assert "scst_vdisk" in lsmod(target)
    need("iscsi-inq")
    inq = subprocess.run(["iscsi-inq", lun_url(target, 0)], capture_output=True, text=True,
                         timeout=30)
    assert inq.returncode == 0 and "disk0" in inq.stdout


def test_module_parameters_live_under_sys_module_and_obey_permissions(target) -> None:
    assert uscstadmin_ok(target.ctl, "get", "/module/scst_vdisk/parameters/num_threads").strip() == "8"
    max_sessions = "/module/iscsi_scst/parameters/iscsi_max_sessions"
    assert uscstadmin_ok(target.ctl, "get", max_sessions).strip() == "256"
    uscstadmin_ok(target.ctl, "set", max_sessions, "64")
    assert uscstadmin_ok(target.ctl, "get", max_sessions).strip() == "64"
    r = uscstadmin_run(target.ctl, "set", "/module/scst_vdisk/parameters/num_threads", "2")    # 0444
    assert r.returncode == 1 and "EACCES" in r.stderr
    r = uscstadmin_run(target.ctl, "set", "/module/iscsi_scst/parameters/iscsi_max_sessions", "many")
    assert r.returncode == 1 and "invalid for parameter 'iscsi_max_sessions'" in r.stderr


def test_the_tutorial_steps_load_serve_refuse_unload_and_reload_an_edit(target,
                                                                         tmp_path: Path) -> None:
    need("iscsi-inq")
    need("iscsi-test-cu")
    pid = target.proc.pid
    # 1. check the module stays inside the kernel boundary
    assert "imports only kshim" in uscstadmin_ok(target.ctl, "insmod", "--check", str(EXAMPLE))
    # 2. load it with a parameter, create a device, map it
    assert uscstadmin_ok(target.ctl, "insmod", str(EXAMPLE), "dev_size_mb=16").strip() == \
        "module vdisk_pattern loaded"
    assert uscstadmin_ok(target.ctl, "get", "/module/vdisk_pattern/parameters/dev_size_mb").strip() == "16"
    assert lsmod(target)["vdisk_pattern"] == (0, "")
    uscstadmin_ok(target.ctl, "open-dev", "pat0", "--handler", "vdisk_pattern", "-p", "seed=0x1234")
    uscstadmin_ok(target.ctl, "add-lun", target.iqn, "1", "pat0")
    assert uscstadmin_ok(target.ctl, "get", "devices/pat0/seed").strip() == "4660"
    # 3. initiators see it
    inq = subprocess.run(["iscsi-inq", lun_url(target, 1)], capture_output=True, text=True,
                         timeout=30)
    assert inq.returncode == 0 and "Product:PATTERN" in inq.stdout, inq.stdout
    cu = subprocess.run(["iscsi-test-cu", "-t", "ALL.Read10", lun_url(target, 1)],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert re.search(r"tests\s+\d+\s+(\d+)\s+\1\s+0\s", cu.stdout), cu.stdout[-3000:]
    data = read_lun(target, 1, tmp_path / "pat0.img")
    assert len(data) == 16 << 20
    assert all(data[i * BLOCK:(i + 1) * BLOCK] == pattern(i, 0x1234) for i in range(len(data) // BLOCK))
    # 4. busy while the LUN exists
    r = uscstadmin_run(target.ctl, "rmmod", "vdisk_pattern")
    assert r.returncode == 1 and "-EBUSY" in r.stderr and f"LUN 1 of {target.iqn}" in r.stderr
    # 5. unmap, unload
    uscstadmin_ok(target.ctl, "rem-lun", target.iqn, "1")
    assert uscstadmin_ok(target.ctl, "rmmod", "vdisk_pattern").strip() == "module vdisk_pattern removed"
    assert "vdisk_pattern" not in lsmod(target)
    # 6. edit, load again, same daemon
    new = edited(tmp_path, 'b"PATTERN".ljust(16)', 'b"PATTERN v2".ljust(16)')
    uscstadmin_ok(target.ctl, "insmod", str(new))
    uscstadmin_ok(target.ctl, "open-dev", "pat0", "--handler", "vdisk_pattern", "-p", "seed=7")
    uscstadmin_ok(target.ctl, "add-lun", target.iqn, "1", "pat0")
    inq = subprocess.run(["iscsi-inq", lun_url(target, 1)], capture_output=True, text=True,
                         timeout=30)
    assert "Product:PATTERN v2" in inq.stdout, inq.stdout
    assert read_lun(target, 1, tmp_path / "v2.img")[:BLOCK] == pattern(0, 7)
    assert target.proc.pid == pid and target.proc.poll() is None


def test_a_module_whose_init_fails_is_named_and_leaves_nothing_behind(target,
                                                                    tmp_path: Path) -> None:
    bad = edited(tmp_path, "    if dev_size_mb < 1:\n",
                 "    if dev_size_mb < 1000000:\n")
    r = uscstadmin_run(target.ctl, "insmod", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip() == "uscstadmin: vdisk_pattern: module init failed: -EINVAL"
    assert "vdisk_pattern: dev_size_mb 64 must be at least 1" in target.stderr_text()
    assert "vdisk_pattern" not in lsmod(target)
    assert "vdisk_pattern" not in uscstadmin_ok(target.ctl, "list", "handlers")
    assert uscstadmin_run(target.ctl, "get", "/module/vdisk_pattern").returncode == 1
    uscstadmin_ok(target.ctl, "insmod", str(EXAMPLE))            # the fixed file loads in the same daemon
    assert "vdisk_pattern" in lsmod(target)


def test_a_module_raising_in_exec_is_reported_with_its_kthread_and_lun_0_keeps_serving(
        target, tmp_path: Path) -> None:
    need("iscsi-test-cu")
    bad = edited(tmp_path, "    lba = pc.lba\n", "    lba = pc.lba // 0\n")
    uscstadmin_ok(target.ctl, "insmod", str(bad))
    uscstadmin_ok(target.ctl, "open-dev", "pat0", "--handler", "vdisk_pattern")
    uscstadmin_ok(target.ctl, "add-lun", target.iqn, "1", "pat0")
    need("qemu-img")
    r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", lun_url(target, 1),
                        str(tmp_path / "x.img")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "HARDWARE_ERROR" in r.stderr, r.stderr
    err = target.stderr_text()
    assert re.search(r"BUG: oops in exec of dev handler vdisk_pattern \(module vdisk_pattern\) "
                     r"\(module=vdisk_pattern handler=vdisk_pattern context=kthread \S+ "
                     r"tag=0x[0-9a-f]+ error=ZeroDivisionError", err), err[-3000:]
    cu = subprocess.run(["iscsi-test-cu", "-t", "ALL.Read10.Simple", lun_url(target, 0)],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert re.search(r"tests\s+1\s+1\s+1\s+0\s", cu.stdout), cu.stdout[-2000:]
    assert target.proc.poll() is None
    target.stop()
    target.checked = True        # the BUG lines above are this test's point


def test_the_tutorials_use_after_free_is_caught_by_slab_poisoning(target, tmp_path: Path) -> None:
    bad = edited(tmp_path, "            lba += 1\n    scst_set_resp_data_len(",
                 "            lba += 1\n    kmem_cache_free(pattern_cmd_cache, pc)\n"
                 "    scst_set_resp_data_len(")
    uscstadmin_ok(target.ctl, "insmod", str(bad))
    uscstadmin_ok(target.ctl, "open-dev", "pat0", "--handler", "vdisk_pattern")
    uscstadmin_ok(target.ctl, "add-lun", target.iqn, "1", "pat0")
    need("qemu-img")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", lun_url(target, 1),
                    str(tmp_path / "x.img")], capture_output=True, text=True, timeout=120)
    err = target.stderr_text()
    assert "BUG: use after free (cache=vdisk_pattern_cmd object=pattern_cmd attribute=nblocks)" \
        in err, err[-3000:]
    assert re.search(r"BUG: double free \(cache=vdisk_pattern_cmd object=pattern_cmd "
                     r"at=\S+vdisk_pattern.py:\d+ \(pattern_dev_done\)\)", err), err[-3000:]
    assert target.proc.poll() is None
    target.stop()
    target.checked = True


def test_uscstd_module_option_loads_a_module_with_parameters_at_start(uscstd,
                                                                     tmp_path: Path) -> None:
    ctl = str(tmp_path / "ctl.sock")
    srv = uscstd("--control", ctl, "--module", f"{EXAMPLE}:dev_size_mb=8")
    srv.ctl = ctl
    assert "uscstd: module vdisk_pattern loaded" in srv.stdout_text()
    assert list(lsmod(srv))[0] == "vdisk_pattern"
    assert uscstadmin_ok(srv.ctl, "get", "/module/vdisk_pattern/parameters/dev_size_mb").strip() == "8"


def test_uscstd_refuses_to_start_when_a_module_init_fails(tmp_path: Path) -> None:
    bad = edited(tmp_path, "    if dev_size_mb < 1:\n", "    if dev_size_mb < 1000000:\n")
    r = subprocess.run([sys.executable, "-m", "tools.uscstd", "--nullio", "--portal",
                        "127.0.0.1:1", "--control", str(tmp_path / "c.sock"),
                        "--module", str(bad)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == \
        f"uscstd: --module {bad}: module vdisk_pattern init failed: -EINVAL"


def test_uscstd_module_option_with_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "tools.uscstd", "--module",
                        str(tmp_path / "nope.py")], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr == f"uscstd: --module {tmp_path / 'nope.py'}: no such file\n"


def test_insmod_check_reports_host_imports_and_passes_clean_modules(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text("import os\nfrom kshim.printk import pr_info\nimport time as t\n")
    r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "insmod", "--check", str(leaky)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{leaky}:1: imports os: host module in kernel code (go through kshim)",
        f"{leaky}:3: imports time: host module in kernel code (go through kshim)"]
    assert "2 import(s) cross the kernel boundary" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "insmod", "--check",
                        str(EXAMPLE)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_reloaded_module_gets_its_devices_and_luns_back_from_the_config(tmp_path: Path) -> None:
    from mgmt_support import Daemon, free_port
    port = free_port()
    conf = f"""HANDLER vdisk_pattern {{
\tDEVICE pat0 {{
\t\tblocks 16384
\t\tseed 5
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tportal 127.0.0.1:{port}
\tTARGET iqn.2026-11.org.uscst:cf {{
\t\tLUN 0 pat0
\t\tenabled 1
\t}}
}}
"""
    d = Daemon(tmp_path, conf, extra=["--module", str(EXAMPLE), "--debug"], port=port)
    try:
        assert d.wait_for("uscstd: control socket"), d.output()
        assert "uscstd: module vdisk_pattern loaded" in d.output()
        written = d.admin("write-config").stdout
        assert "\t\tblocks 16384\n\t\tseed 5\n" in written, written
        assert d.admin("config", str(d.config)).stdout.strip() == "0 changes applied"
        d.admin("rem-lun", "iqn.2026-11.org.uscst:cf", "0")
        d.admin("rmmod", "vdisk_pattern")
        d.admin("insmod", str(EXAMPLE))
        assert d.admin("reload").stdout.strip() == "2 changes applied"
        assert "LUN 0 of iqn.2026-11.org.uscst:cf" in d.admin("lsmod").stdout
        assert d.admin("get", "devices/pat0/seed").stdout.strip() == "5"
    finally:
        assert d.stop() == 0, d.output()
    assert "BUG" not in d.output() and "Traceback" not in d.output(), d.output()


def test_insmod_of_a_broken_file_or_a_target_module_name_is_refused_in_one_line(
        target, tmp_path: Path) -> None:
    broken = tmp_path / "vdisk_broken.py"
    broken.write_text("from kshim.module import module_init\ndef (:\n")
    r = uscstadmin_run(target.ctl, "insmod", str(broken))
    assert r.returncode == 1
    assert r.stderr.startswith(f"uscstadmin: {broken}: cannot import: SyntaxError: ")
    assert len(r.stderr.splitlines()) == 1
    clash = tmp_path / "scst_vdisk.py"
    clash.write_text(EXAMPLE.read_text())
    r = uscstadmin_run(target.ctl, "insmod", str(clash))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"uscstadmin: {clash}: scst_vdisk is the name of a module of "
                                f"the target itself")
    r = uscstadmin_run(target.ctl, "insmod", "no_such_module_anywhere")
    assert r.returncode == 1 and "cannot import no_such_module_anywhere" in r.stderr
    assert list(lsmod(target)) == ["iscsi_scst", "scst_vdisk", "scst"]
    target.assert_healthy()
