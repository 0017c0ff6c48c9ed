"""Write "newc" cpio archives, the format the Linux initramfs loader reads.

Kept dependency-free so the guest builder and the tests can append a
test script to an initramfs without the cpio tool.
"""

import stat

TRAILER = 'TRAILER!!!'


def _header(ino, mode, size, name, nlink=1):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return ('070701' + ''.join('%08X' % f for f in fields)).encode()


def _pad(n):
    return b'\0' * ((4 - n % 4) % 4)


def cpio_newc(entries):
    """Return a newc archive of ENTRIES.

    Each entry is ('dir', path, None), ('file', path, bytes, mode) or
    ('symlink', path, target).  Paths are relative, without a leading '/'.
    """
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        kind, path = entry[0], entry[1]
        if kind == 'dir':
            mode, data = stat.S_IFDIR | 0o755, b''
        elif kind == 'file':
            mode, data = stat.S_IFREG | entry[3], entry[2]
        elif kind == 'symlink':
            mode, data = stat.S_IFLNK | 0o777, entry[2].encode()
        else:
            raise ValueError('unknown cpio entry kind %r' % kind)
        name = path.encode()
        head = _header(ino, mode, len(data), name,
                       nlink=2 if kind == 'dir' else 1)
        out += head + name + b'\0'
        out += _pad(len(head) + len(name) + 1)
        out += data + _pad(len(data))
    head = _header(0, 0, 0, TRAILER.encode())
    out += head + TRAILER.encode() + b'\0' + _pad(len(head) + len(TRAILER) + 1)
    return bytes(out)
