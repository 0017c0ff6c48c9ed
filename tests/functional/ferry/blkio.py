"""The virtio-blk guest tests' block I/O tool (blkio.c) and its host side.

blkio.c is built static on the host (gcc -static, once per test process)
and appended to the x86_64 initramfs as /bin/blkio (linux_guest(files=)).
The pattern it writes is checked here in the image file the guest's disk
sits on: every 512-byte sector holds a header (magic, the sector's number
on the device, a seed naming the writer, a sequence number) and a fixed
body, so a sector written to the wrong place, by the wrong writer, or not
at all is found and named.
"""

import array
import atexit
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from ferry import env

SECTOR = 512
BODY_SIZE = 480
MAGIC = 0x314b4c4259524546
BOOT_MAGIC = 0x544f4f4259524546
ANCHOR_SEQ = (1 << 64) - 1
SLOT = 4096
CHUNK = 1 << 20
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'blkio.c')


def _body():
    x, out, mask = 0x9e3779b97f4a7c15, bytearray(), (1 << 64) - 1
    for _ in range(BODY_SIZE):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        out.append(x >> 56)
    return bytes(out)


BODY = _body()
_HEADER = struct.Struct('<QQQQ')
_built = None
_templates = {}
_zeros = {}


def _zero(n):
    if n not in _zeros:
        _zeros[n] = bytes(n)
    return _zeros[n]


def build():
    """Path of the static blkio binary, built on first use."""
    global _built
    if _built is None:
        work = tempfile.mkdtemp(prefix='ferry-blkio-')
        atexit.register(shutil.rmtree, work, ignore_errors=True)
        out = os.path.join(work, 'blkio')
        subprocess.run(['gcc', '-static', '-O2', '-Wall', '-Wextra', '-Werror',
                        '-o', out, SOURCE], check=True)
        _built = out
    return _built


def initramfs_files():
    """linux_guest(files=...) entries installing blkio as /bin/blkio."""
    with open(build(), 'rb') as f:
        return [('file', 'bin/blkio', f.read(), 0o755)]


def pattern(off, length, seed, seq=0, into=None):
    """The bytes blkio writes at device offset OFF (sector aligned), in a
    new bytearray or in INTO (of LENGTH bytes).  Buffers are reused: on
    this host each fresh megabyte costs milliseconds of page faults."""
    n = length // SECTOR
    key = (seed, seq, n)
    if key not in _templates:
        if len(_templates) > 8:
            _templates.clear()
        _templates[key] = (_HEADER.pack(MAGIC, 0, seed, seq) + BODY) * n
    if into is None:
        into = bytearray(_templates[key])
    else:
        into[:] = _templates[key]
    # The sector numbers, written byte by byte into their header field
    # with strided slices: per-sector Python would take seconds per
    # 256 MiB.
    lbas = array.array('Q', range(off // SECTOR, off // SECTOR + n))
    if sys.byteorder != 'little':
        lbas.byteswap()
    raw = lbas.tobytes()
    for k in range(8):
        into[8 + k::SECTOR] = raw[k::8]
    return into


def first_difference(f, off, length, expect):
    """Offset of the first sector in [OFF, OFF+LENGTH) of the open file F
    that differs from EXPECT(off, length, buffer), which returns the
    expected bytes (in BUFFER, a bytearray of LENGTH bytes, if it
    likes); called per chunk.  None if none differs."""
    data, want = bytearray(CHUNK), bytearray(CHUNK)
    for start in range(off, off + length, CHUNK):
        n = min(CHUNK, off + length - start)
        if n != len(data):
            data, want = bytearray(n), bytearray(n)
        f.seek(start)
        got = f.readinto(data)
        if got != n:
            return start + got // SECTOR * SECTOR
        expected = expect(start, n, want)
        if data != expected:
            for i in range(0, n, SECTOR):
                if data[i:i + SECTOR] != expected[i:i + SECTOR]:
                    return start + i
    return None


def describe(f, off):
    """What the sector at OFF of F holds, for a failure message."""
    f.seek(off)
    data = f.read(SECTOR)
    if data == bytes(SECTOR):
        return 'sector at %d is zero' % off
    magic, lba, seed, seq = _HEADER.unpack(data[:32])
    if magic != MAGIC:
        return 'sector at %d is not blkio data: %s' % (off, data[:32].hex())
    return ('sector at %d holds sector %d of writer %d, seq %d%s'
            % (off, lba, seed, seq, '' if data[32:] == BODY
               else ', body corrupt'))


def check_pattern(path, off, length, seed, seq=0):
    """None if [OFF, OFF+LENGTH) of the image PATH holds blkio's pattern of
    SEED (write seq SEQ), else what the first bad sector holds."""
    with open(path, 'rb') as f:
        bad = first_difference(f, off, length,
                               lambda o, n, b: pattern(o, n, seed, seq, b))
        return None if bad is None else describe(f, bad)


def check_zero(path, off, length):
    """None if [OFF, OFF+LENGTH) of the image PATH reads as zeros, else
    what the first non-zero sector holds."""
    with open(path, 'rb') as f:
        bad = first_difference(f, off, length, lambda o, n, b: _zero(n))
        return None if bad is None else describe(f, bad)


def check_stream(path, off, slots, seed):
    """The region of `blkio stream` at OFF of the image PATH, checked as
    the guest checks it at a later boot: (boots, newest seq) when the
    anchor is intact and the slots hold the SLOTS writes up to the newest
    (or all of them, from 0); raises AssertionError otherwise.  The
    guest must be stopped (its writes drained)."""
    anchor, base = off + SLOT, off + SLOT + CHUNK
    with open(path, 'rb') as f:
        f.seek(off)
        magic, boots, marker_seed = struct.unpack('<QQQ', f.read(24))
        if (magic, marker_seed) != (BOOT_MAGIC, seed):
            raise AssertionError('stream %d: no boot marker at %d'
                                 % (seed, off))
        bad = first_difference(f, anchor, CHUNK, lambda o, n, b: pattern(
            o, n, seed, ANCHOR_SEQ, b))
        if bad is not None:
            raise AssertionError('stream %d: anchor: %s'
                                 % (seed, describe(f, bad)))
        f.seek(base)
        data = f.read(slots * SLOT)
        seqs = [_HEADER.unpack_from(data, s * SLOT)[3]
                if data[s * SLOT:s * SLOT + 8] == MAGIC.to_bytes(8, 'little')
                else None for s in range(slots)]
        written = [q for q in seqs if q is not None]
        if not written:
            raise AssertionError('stream %d: no slot written' % seed)
        newest = max(written)

        def expect(o, n, _):
            out = []
            for s in range((o - base) // SLOT, (o - base + n) // SLOT):
                if newest < slots and s > newest:
                    out.append(bytes(SLOT))
                else:
                    out.append(pattern(base + s * SLOT, SLOT, seed,
                                       newest - (newest - s) % slots))
            return b''.join(out)
        bad = first_difference(f, base, slots * SLOT, expect)
        if bad is not None:
            raise AssertionError('stream %d: newest write %d, but %s'
                                 % (seed, newest, describe(f, bad)))
        return boots, newest


def make_image(path, size):
    """A sparse raw image of SIZE bytes at PATH."""
    with open(path, 'wb') as f:
        f.truncate(size)
    return path


def engine_in_build(flavour='ferry'):
    """True when FLAVOUR's x86_64 binary has the vring engine's trace
    events (SPEC section 3)."""
    out = subprocess.run([env.binary(flavour, 'x86_64'), '-trace', 'help'],
                         capture_output=True, text=True).stdout
    return 'virtio_blk_vring_start' in out.split()


def add_trace(vm):
    """Trace VM's virtio-blk dataplane starts and stops and its vring
    engine's start, stop, fallback and error events (not the
    per-notification one) to a file of its own, vm.trace.  Globs, so
    that a binary without the engine's events takes them silently."""
    vm.trace = os.path.join(vm.tmpdir, 'trace.log')
    vm.add_process_args('-trace', 'enable=virtio_blk_data_plane_*',
                        '-trace', 'enable=virtio_blk_vring_st*',
                        '-trace', 'enable=virtio_blk_vring_fallback*',
                        '-trace', 'enable=virtio_blk_vring_error*',
                        '-D', vm.trace)


def read_trace(vm):
    """What VM traced so far (add_trace())."""
    try:
        with open(vm.trace) as f:
            return f.read()
    except FileNotFoundError:
        return ''
