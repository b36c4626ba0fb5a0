"""The iSCSI target driver as one kernel module, `iscsi_scst`
(iscsi-scst.ko): every file of this package belongs to it. Its init and
exit are iscsi_init/iscsi_exit in iscsi_scst.iscsi, its parameters are
declared there."""
from kshim.module import MODULE_NAME

MODULE_NAME("iscsi_scst")
