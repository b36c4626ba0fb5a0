"""Error numbers and the pointer-or-error convention.

Twin of include/uapi/asm-generic/errno-base.h, errno.h and include/linux/err.h.

Contexts: any.

Differs from the kernel: ERR_PTR/PTR_ERR are not needed, since a Python
function returns either the object or a negative int; IS_ERR() tells them
apart. The values match Linux x86-64 so host errors translate one to one.
"""
from __future__ import annotations

EPERM = 1
ENOENT = 2
EINTR = 4
EIO = 5
ENXIO = 6
E2BIG = 7
EBADF = 9
EAGAIN = 11
EWOULDBLOCK = EAGAIN
ENOMEM = 12
EACCES = 13
EFAULT = 14
EBUSY = 16
EEXIST = 17
ENODEV = 19
EINVAL = 22
ENFILE = 23
EMFILE = 24
EFBIG = 27
ENOSPC = 28
ESPIPE = 29
EROFS = 30
EPIPE = 32
ERANGE = 34
ENAMETOOLONG = 36
ENOSYS = 38
ENOTEMPTY = 39
ENODATA = 61
ETIME = 62
EPROTO = 71
EBADMSG = 74
EOVERFLOW = 75
EOPNOTSUPP = 95
EADDRINUSE = 98
EADDRNOTAVAIL = 99
ENETDOWN = 100
ENETUNREACH = 101
ECONNABORTED = 103
ECONNRESET = 104
ENOBUFS = 105
EISCONN = 106
ENOTCONN = 107
ESHUTDOWN = 108
ETIMEDOUT = 110
EDQUOT = 122
ECONNREFUSED = 111
EHOSTUNREACH = 113
EALREADY = 114
EINPROGRESS = 115
ERESTARTSYS = 512


def IS_ERR(x: object) -> bool:
    """True for a negative errno returned in place of an object."""
    return isinstance(x, int) and not isinstance(x, bool) and -4095 <= x < 0


def IS_ERR_OR_NULL(x: object) -> bool:
    return x is None or IS_ERR(x)


def PTR_ERR(x: int) -> int:
    return x


_NAMES = {v: k for k, v in sorted(globals().items(), reverse=True)
          if k.isupper() and k.startswith("E") and isinstance(v, int)}


def errname(err: int) -> str:
    """'-ENOMEM' for -12; the number itself when unknown."""
    name = _NAMES.get(abs(err))
    if name is None:
        return str(err)
    return ("-" if err < 0 else "") + name
