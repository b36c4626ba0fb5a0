"""The vdisk dev handlers as one kernel module, `scst_vdisk`
(scst_vdisk.ko): every file of this package belongs to it. Its init and
exit are vdisk_init/vdisk_exit in vdisk.vdisk, its parameters are declared
there."""
from kshim.module import MODULE_NAME

MODULE_NAME("scst_vdisk")
