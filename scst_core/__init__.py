"""The SCST core as one kernel module, `scst` (scst.ko): every file of this
package belongs to it (kshim.module's package rule). Its init and exit are
init_scst/exit_scst in scst_core.main, its parameters are declared there."""
from kshim.module import MODULE_NAME

MODULE_NAME("scst")
