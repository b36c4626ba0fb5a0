"""scst_core/ua.py: unit attentions queued on a nexus, reported once as
CHECK CONDITION, cleared by REPORT LUNS (3F/0E) and handed to REQUEST
SENSE; built on real core structures, no engine needed (nothing sleeps)."""
from __future__ import annotations

from scst_core.const import (INQUIRY, REPORT_LUNS, scst_sense_capacity_data_changed_UA,
                             scst_sense_reported_luns_data_changed_UA)
from scst_core.scst import (scst_acg, scst_acg_dev, scst_cmd, scst_dev_type, scst_device,
                            scst_session, scst_tgt, scst_tgt_dev, scst_tgt_template)
from scst_core.ua import (SCST_MAX_UA, scst_capacity_data_changed, scst_check_ua, scst_queue_ua,
                          scst_report_luns_changed, scst_ua_pending_sense)


def nexus(luns: int = 2) -> tuple[scst_session, scst_acg, list[scst_tgt_dev]]:
    tgt = scst_tgt(scst_tgt_template("iscsi"), "iqn.2026-11.a:t")
    acg = scst_acg(tgt, "default")
    sess = scst_session(tgt, "iqn.x:i", acg=acg)
    acg.acg_sess_list.append(sess)
    devs = []
    for lun in range(luns):
        dev = scst_device(0, scst_dev_type("vdisk_nullio", 0), f"n{lun}")
        ad = scst_acg_dev(dev, lun, acg)
        td = scst_tgt_dev(dev, sess, lun, ad)
        dev.dev_tgt_dev_list.append(td)
        sess.sess_tgt_dev_list[lun] = td
        devs.append(td)
    return sess, acg, devs


def cmd_for(td: scst_tgt_dev, op: int) -> scst_cmd:
    c = scst_cmd(td.sess, td.sess.tgt, td.sess.tgt.tgtt, bytes([op]) + bytes(9))
    c.tgt_dev, c.dev, c.lun = td, td.dev, td.lun
    return c


def test_report_luns_changed_is_reported_once_per_lun_as_check_condition() -> None:
    sess, acg, (td0, td1) = nexus()
    scst_report_luns_changed(acg)
    c = cmd_for(td0, 0x00)                       # TEST UNIT READY
    assert scst_check_ua(c) is True
    assert c.status == 0x02 and c.sense[2] == 0x06 and (c.sense[12], c.sense[13]) == (0x3F, 0x0E)
    assert scst_check_ua(cmd_for(td0, 0x00)) is False
    assert td1.UA_list == [scst_sense_reported_luns_data_changed_UA]


def test_report_luns_clears_the_inventory_ua_on_every_lun_and_inquiry_is_transparent() -> None:
    sess, acg, (td0, td1) = nexus()
    scst_report_luns_changed(acg)
    scst_queue_ua(td1, scst_sense_capacity_data_changed_UA)
    assert scst_check_ua(cmd_for(td0, INQUIRY)) is False
    assert scst_check_ua(cmd_for(td0, REPORT_LUNS)) is False
    assert td0.UA_list == [] and td1.UA_list == [scst_sense_capacity_data_changed_UA]


def test_capacity_change_reaches_every_nexus_of_the_device_and_request_sense_takes_it() -> None:
    sess, acg, (td0, td1) = nexus()
    scst_capacity_data_changed(td0.dev)
    assert td0.UA_list == [scst_sense_capacity_data_changed_UA] and td1.UA_list == []
    sense = scst_ua_pending_sense(cmd_for(td0, 0x03))
    assert sense is not None and sense[0] == 0x70 and (sense[12], sense[13]) == (0x2A, 0x09)
    assert scst_ua_pending_sense(cmd_for(td0, 0x03)) is None


def test_queue_drops_duplicates_and_is_bounded() -> None:
    sess, acg, (td0,) = nexus(1)
    for i in range(3 * SCST_MAX_UA):
        scst_queue_ua(td0, (0x06, 0x29, i % (2 * SCST_MAX_UA)))
        scst_queue_ua(td0, (0x06, 0x29, i % (2 * SCST_MAX_UA)))
    assert len(td0.UA_list) == SCST_MAX_UA == len(set(td0.UA_list))
