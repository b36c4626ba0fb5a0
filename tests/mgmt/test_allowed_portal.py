"""allowed_portal: a target reachable only through matching portals; other
logins fail with 02/02, authorization failure (RFC 7143 11.13.5)."""
from __future__ import annotations

from pathlib import Path

import pytest

from initiator import Initiator, LoginError
from mgmt_support import TARGET, Daemon, free_port


def _config(tmp: Path, port: int, pattern: str) -> str:
    return f"""HANDLER vdisk_nullio {{
\tDEVICE null1 {{
\t\tsize 1G
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tportal 127.0.0.1:{port}
\tTARGET {TARGET} {{
\t\tLUN 0 null1
\t\tallowed_portal {pattern}
\t\tenabled 1
\t}}
}}
"""


@pytest.mark.parametrize("pattern, allowed", [("127.0.0.*", True), ("10.9.8.*", False)])
def test_allowed_portal_admits_or_refuses_with_02_02(tmp_path: Path, pattern: str,
                                                     allowed: bool) -> None:
    port = free_port()
    d = Daemon(tmp_path, config_text=_config(tmp_path, port, pattern), port=port)
    try:
        assert d.wait_for("uscstd: control socket"), d.output()
        ini = Initiator("127.0.0.1", port, timeout=10.0)
        ini.connect()
        try:
            if allowed:
                ini.login(TARGET)
                assert ini.test_unit_ready(0).ok
            else:
                with pytest.raises(LoginError) as e:
                    ini.login(TARGET)
                assert (e.value.status_class, e.value.status_detail) == (2, 2)
        finally:
            ini.close()
    finally:
        d.stop()
