"""Every management input surface, fuzzed with hypothesis (issue 16
section 7): control-socket requests, writes to every live-tree attribute
and mgmt file (through the socket and, where /dev/fuse works, the FUSE
mount), scst.conf text, and the uscstd / uscstadmin command lines.

What must hold for every input: a reply (or a usage error), never a
traceback, an Oops, a "control: ... raised" line (a handler bug), a dead
server or a dead iSCSI session. One uscstd serves the whole module; the
iSCSI session opened at the start must still answer at the end.

Seeds are fixed (@seed) and examples bounded, so a failure replays.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ctl_support import Daemon, RawCtl
from initiator import Initiator
from kshim.engine_ctl import fuse_unavailable
from tools import scst_conf, uscstadmin, uscstd

IQN = "iqn.2026-11.org.uscst:default"
ROOT = "/kernel/scst_tgt"
SETTINGS = dict(deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Surface:
    def __init__(self, d: Daemon, ini: Initiator, fuse: Path | None, files: list[str]) -> None:
        self.d, self.ini, self.fuse, self.files = d, ini, fuse, files
        self.ctl = RawCtl(d.ctl)


def _writable(node: dict, path: str, out: list[str]) -> None:
    for c in node.get("children", []):
        p = f"{path}/{c['name']}"
        if c["kind"] == "file" and c["mode"] & 0o222:
            out.append(p)
        elif c["kind"] == "dir":
            _writable(c, p, out)


@pytest.fixture(scope="module")
def surface(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Surface]:
    work = tmp_path_factory.mktemp("surfaces")
    extra = ["--nullio", "--size", "64M"]
    fuse = None
    if fuse_unavailable() is None and os.geteuid() == 0:
        fuse = work / "mnt"
        fuse.mkdir()
        extra += ["--fuse", str(fuse)]
    d = Daemon(work, *extra)
    try:
        d.wait_ready()
        if fuse is not None and "management tree mounted" not in d.output():
            fuse = None
        ini = Initiator(port=d.port, timeout=20.0)
        ini.connect()
        ini.login(IQN)
        with RawCtl(d.ctl) as c:
            tree = c.call("tree", path=ROOT, values=False)["tree"]
        files: list[str] = []
        _writable(tree, ROOT, files)
        s = Surface(d, ini, fuse, files)
        yield s
        s.ctl.close()
        assert ini.test_unit_ready().status == 0, "the iSCSI session did not survive"
        ini.close()
        assert d.proc.poll() is None, d.output()[-4000:]
        assert d.unhealthy() == [], d.output()[-8000:]
    finally:
        assert d.stop() == 0, d.output()[-4000:]


def _check_reply(rsp: dict | None) -> None:
    assert rsp is not None, "the control socket closed instead of replying"
    assert isinstance(rsp.get("ok"), bool)
    if not rsp["ok"]:
        assert isinstance(rsp.get("error"), str)


def _healthy(s: Surface) -> None:
    assert s.d.proc.poll() is None, s.d.output()[-4000:]
    bad = s.d.unhealthy()
    assert not bad, "\n".join(bad[-20:])


# -- control-socket requests -----------------------------------------------------

OPS = ["ping", "read", "write", "ls", "readlink", "tree", "proc", "config_apply", "config_write",
       "schema", "reload", "nonsense", ""]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                      st.text(max_size=40))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
conf_words = st.sampled_from(["HANDLER", "DEVICE", "TARGET_DRIVER", "TARGET", "GROUP", "LUN",
                              "INITIATOR", "DEVICE_GROUP", "TARGET_GROUP", "vdisk_nullio",
                              "vdisk_fileio", "iscsi", "enabled", "size", "filename", "0", "1",
                              "read_only", IQN, "x", "{", "}", "\n", "#", '"', "'", "\\", " "])
conf_text = st.one_of(st.text(max_size=300),
                      st.lists(conf_words, max_size=80).map(" ".join))
path_text = st.one_of(st.sampled_from(["/", ROOT, f"{ROOT}/targets/iscsi", f"{ROOT}/handlers",
                                       f"{ROOT}/targets/iscsi/{IQN}/luns/0/device",
                                       f"{ROOT}/../..", "//", ""]),
                      st.text(max_size=60), st.text(max_size=20).map(lambda t: f"{ROOT}/{t}"))
request = st.one_of(
    st.fixed_dictionaries({"op": st.sampled_from(OPS)},
                          optional={"path": st.one_of(path_text, json_any),
                                    "value": st.one_of(st.text(max_size=80), json_any),
                                    "name": st.one_of(st.sampled_from(["slabinfo", "top", "x"]),
                                                      json_any),
                                    "values": json_any, "filename": st.text(max_size=20),
                                    "dry_run": st.just(True), "extra": json_any}),
    st.fixed_dictionaries({"op": st.just("config_apply"), "text": conf_text,
                           "filename": st.text(max_size=20), "dry_run": st.booleans()}),
    json_any)


@seed(1601)
@settings(max_examples=300, **SETTINGS)
@given(req=request)
def test_fuzzed_control_requests_all_get_a_reply(surface: Surface, req: object) -> None:
    _check_reply(surface.ctl.send_line(json.dumps(req).encode()))


@seed(1602)
@settings(max_examples=150, **SETTINGS)
@given(line=st.binary(max_size=200).filter(lambda b: b"\n" not in b))
def test_fuzzed_raw_control_lines_all_get_a_reply(surface: Surface, line: bytes) -> None:
    _check_reply(surface.ctl.send_line(line))


# -- writes to every attribute and mgmt file -------------------------------------

MGMT_WORDS = ["add_device", "del_device", "add_target", "del_target", "add", "del", "create",
              "clear", "replace", "move", "add_target_attribute", "del_target_attribute",
              "add_attribute", "del_attribute", "set_filename", "resync_size", "enable", "disable"]
arg_token = st.one_of(st.sampled_from(["x", "disk0", "0", "1", "-1", "99999999999", IQN,
                                       "size=1M", "filename=f.img", "read_only=1", "blocksize=4096",
                                       "*", "a=b=c", "=", "'", '"']),
                      st.text(alphabet=st.characters(blacklist_characters="/\x00"), max_size=12))
write_value = st.one_of(
    st.text(max_size=100),
    st.builds(lambda w, args: " ".join([w, *args]), st.sampled_from(MGMT_WORDS),
              st.lists(arg_token, max_size=4)))


@seed(1603)
@settings(max_examples=400, **SETTINGS)
@given(data=st.data())
def test_fuzzed_writes_to_every_attribute_and_mgmt_file_are_answered(surface: Surface,
                                                                     data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(surface.files), label="file")
    value = data.draw(write_value, label="value")
    via_fuse = surface.fuse is not None and data.draw(st.booleans(), label="via FUSE")
    if via_fuse:
        rel = path[len(ROOT):].lstrip("/")
        try:
            fd = os.open(surface.fuse / rel, os.O_WRONLY)
        except OSError:
            return                     # gone since the tree was read: an answer too
        try:
            os.write(fd, value.encode("utf-8", "surrogatepass"))
        except OSError:
            pass                       # the store refused it: an answer
        finally:
            os.close(fd)
    else:
        _check_reply(surface.ctl.send_line(
            json.dumps({"op": "write", "path": path, "value": value}).encode()))
    _healthy(surface)


# -- scst.conf text ---------------------------------------------------------------

@seed(1604)
@settings(max_examples=1000, **SETTINGS)
@given(text=conf_text)
def test_fuzzed_scst_conf_text_parses_or_names_file_line_column(text: str) -> None:
    try:
        scst_conf.parse(text, "fuzz.conf")
    except scst_conf.ConfigError as e:
        assert str(e).startswith("fuzz.conf:") and e.line >= 1 and e.col >= 1


def test_scst_conf_of_5000_nested_device_blocks_is_a_file_line_column_error() -> None:
    text = "HANDLER vdisk_nullio {\n" + "DEVICE x {\n" * 5000
    with pytest.raises(scst_conf.ConfigError) as e:
        scst_conf.parse(text, "deep.conf")
    assert str(e.value) == (f"deep.conf:{scst_conf.MAX_BLOCK_DEPTH + 1}:10: blocks nested more "
                            f"than {scst_conf.MAX_BLOCK_DEPTH} deep")


def test_uscstd_with_a_5000_deep_config_exits_1_with_one_file_line_column_line(
        tmp_path: Path) -> None:
    conf = tmp_path / "deep.conf"
    conf.write_text("HANDLER vdisk_nullio {\n" + "DEVICE x {\n" * 5000)
    d = Daemon(tmp_path, "--config", str(conf))
    try:
        assert d.proc.wait(60) == 1
    finally:
        d.kill()
    out = d.output()
    assert f"{conf}:9:10: blocks nested more than 8 deep" in out, out
    assert d.unhealthy() == [], out


# -- command lines ------------------------------------------------------------------

USCSTD_OPTS = ["--portal", "--disk", "--size", "--iqn", "--nullio", "--blocksize", "--data-dir",
               "--log-level", "--debug", "--config", "--fuse", "--control", "--bogus", "-"]
argv_word = st.one_of(st.sampled_from(USCSTD_OPTS),
                      st.sampled_from(["1G", "0", "-1", "12Q", "512", "4096", "127.0.0.1:0",
                                       "[::1]:3260", "nonsense", IQN, "debug", "x.img", ""]),
                      st.text(alphabet=st.characters(blacklist_characters="/\x00"), max_size=10))


@seed(1605)
@settings(max_examples=300, **SETTINGS)
@given(argv=st.lists(argv_word, max_size=8))
def test_fuzzed_uscstd_arguments_resolve_or_give_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(uscstd, "default_data_dir", lambda: str(tmp_path / "data"))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            uscstd.resolve(uscstd.build_parser().parse_args(argv))
        except uscstd.UsageError as e:
            assert "\n" not in str(e)
        except SystemExit as e:        # --version
            assert e.code == 0
    assert "Traceback" not in err.getvalue()


ADMIN_WORDS = ["list", "open-dev", "close-dev", "add-target", "rem-target", "enable", "disable",
               "add-lun", "replace-lun", "rem-lun", "clear-luns", "add-group", "rem-group",
               "add-init", "rem-init", "move-init", "clear-inits", "get", "set", "tree", "stats",
               "config", "write-config", "reload", "--json", "--help", "--group", "--handler",
               "-p", "--read-only", "--driver", "--dry-run", "--force", "targets", "devices",
               "handlers", IQN, "disk0", "0", "1", "x", "size=1M", "targets/iscsi"]


@seed(1606)
@settings(max_examples=200, **SETTINGS)
@given(argv=st.lists(st.one_of(st.sampled_from(ADMIN_WORDS),
                               st.text(alphabet=st.characters(blacklist_characters="/\x00"),
                                       max_size=10)), max_size=6))
def test_fuzzed_uscstadmin_arguments_exit_with_a_status_and_no_traceback(
        surface: Surface, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = uscstadmin.main(["--socket", surface.d.ctl, *argv])
    assert rc in (0, 1, 2, 3), rc
    assert "Traceback" not in err.getvalue()
    _healthy(surface)


def test_scst_conf_words_split_at_every_unicode_space_and_parsing_ends() -> None:
    # \v, \f, \x1c-\x1f, \x85, NBSP... used to make the tokenizer loop forever.
    spaces = "".join(c for c in map(chr, range(0x3000 + 1)) if c.isspace() and c != "\n")
    stmts = scst_conf.parse_statements(f"a{spaces}b\n", "space.conf")
    assert [w.text for w in stmts[0].words] == ["a", "b"]
