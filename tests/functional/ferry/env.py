"""Where Ferry's tests find binaries, guests and the base's python/qemu.

Everything is relative to the repository, overridable from the
environment so that the tests can run against another build:
  FERRY_BUILD_DIR   build/ (prepared tree in src/, QEMU build in qemu/)
  FERRY_GUESTS_DIR  build/guests
  FERRY_STOCK_DIR   /usr/bin (Debian's stock qemu-system-* packages)
"""

import os
import shutil
import sys

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
BUILD = os.environ.get('FERRY_BUILD_DIR', os.path.join(TOP, 'build'))
GUESTS = os.environ.get('FERRY_GUESTS_DIR', os.path.join(BUILD, 'guests'))
STOCK = os.environ.get('FERRY_STOCK_DIR', '/usr/bin')

# The base's own QMP/machine library, from the prepared tree.
sys.path.insert(0, os.path.join(BUILD, 'src', 'python'))


def ferry_binary(target):
    """Path of Ferry's qemu-system-TARGET."""
    return os.path.join(BUILD, 'qemu', 'qemu-system-' + target)


def stock_binary(target):
    """Path of Debian's stock qemu-system-TARGET, or None."""
    path = os.path.join(STOCK, 'qemu-system-' + target)
    return path if os.access(path, os.X_OK) else shutil.which('qemu-system-' + target)


def binary(flavour, target):
    return ferry_binary(target) if flavour == 'ferry' else stock_binary(target)


def guest(path):
    """Path of a built test guest artefact (tests/guests/build)."""
    return os.path.join(GUESTS, path)


def kvm_usable():
    """True when /dev/kvm can be opened read-write."""
    try:
        fd = os.open('/dev/kvm', os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True
