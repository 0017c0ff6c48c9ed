"""Every section of a recorded QEMU 7.2 migration stream, with its bytes.

stream.py follows the ram section of an x86 stream alone; this walks the
whole stream as the destination reads it: the header, then each section
in turn, whichever device it belongs to.  The iterable sections ("ram"
and the pseries "spapr/htab") are parsed record by record, so their
sizes are exact; a device's FULL section (vmstate, no length on the
wire) ends at the first footer for its id that a plausible section
follows.  Used by tests/bench/htab to split the switchover's bytes by
section; see migration/savevm.c and hw/ppc/spapr.c (htab_save_*).
"""

import struct

EOF, START, PART, END, FULL = 0x00, 0x01, 0x02, 0x03, 0x04
VMDESC, CONFIGURATION, COMMAND, FOOTER = 0x06, 0x07, 0x08, 0x7e
KIND = {START: 'start', PART: 'part', END: 'end', FULL: 'full'}
MAGIC, VERSION = 0x5145564d, 3

PAGE = 4096
RAM_ZERO, RAM_MEM_SIZE, RAM_PAGE, RAM_EOS, RAM_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
RAM_XBZRLE, RAM_COMPRESS = 0x40, 0x100
HTAB_ENTRY = 16


class Section:
    """One section: KIND 'start', 'part', 'end', 'full' (or 'header',
    'eof' for the stream's frame), [start, end) its bytes including the
    header and footer, STATS what its parser counted."""

    def __init__(self, kind, sid, idstr, start):
        self.kind, self.id, self.idstr, self.start = kind, sid, idstr, start
        self.end = None
        self.stats = {}

    @property
    def size(self):
        return self.end - self.start

    def __repr__(self):
        return '<%s %s #%s %d bytes @%d %s>' % (self.kind, self.idstr, self.id,
                                                self.size, self.start, self.stats)


def _be32(buf, pos):
    return struct.unpack_from('>I', buf, pos)[0]


def ram_payload(buf, pos, kind=None):
    """Skip one ram section's payload (up to and including its EOS);
    (end, stats)."""
    zero = pages = 0
    unpack = struct.Struct('>Q').unpack_from
    while True:
        addr = unpack(buf, pos)[0]
        pos += 8
        flags = addr & (PAGE - 1)
        if flags & RAM_EOS:
            return pos, {'pages': pages, 'zero': zero}
        if flags & RAM_MEM_SIZE:
            total = addr & ~(PAGE - 1)
            while total > 0:
                pos += 1 + buf[pos]
                total -= unpack(buf, pos)[0]
                pos += 8
            continue
        if not flags & RAM_CONTINUE:
            pos += 1 + buf[pos]
        if flags & RAM_ZERO:
            zero += 1
            pos += 1
        elif flags & RAM_PAGE:
            pages += 1
            pos += PAGE
        elif flags & RAM_COMPRESS:
            pages += 1
            pos += 4 + _be32(buf, pos)
        elif flags & RAM_XBZRLE:
            pages += 1
            pos += 3 + struct.unpack_from('>H', buf, pos + 1)[0]
        else:
            raise ValueError('ram: unknown flags 0x%x at %d' % (flags, pos - 8))


def htab_payload(buf, pos, kind):
    """Skip one spapr/htab section's payload: START is the be32 htab_shift
    (-1: radix, no HPT); PART and END a be32 header, 0 followed by chunks
    {be32 index, be16 n_valid, be16 n_invalid, n_valid HPTEs} ended by
    {0, 0, 0}, anything else alone (a new shift, or -1)."""
    head = _be32(buf, pos)
    pos += 4
    if kind == START:
        return pos, {'shift': head}
    if head:
        return pos, {'header': head}
    chunks = valid = invalid = 0
    while True:
        index, n_valid, n_invalid = struct.unpack_from('>IHH', buf, pos)
        pos += 8
        if not (index or n_valid or n_invalid):
            return pos, {'chunks': chunks, 'valid': valid, 'invalid': invalid}
        chunks += 1
        valid += n_valid
        invalid += n_invalid
        pos += HTAB_ENTRY * n_valid


PAYLOAD = {'ram': ram_payload, 'spapr/htab': htab_payload}


def _plausible_next(buf, pos):
    """True if a FULL section's footer may end at POS: what follows is
    the end of the stream or another FULL section with a printable id."""
    if pos >= len(buf) or buf[pos] == EOF:
        return True
    if buf[pos] != FULL or pos + 6 > len(buf):
        return False
    n = buf[pos + 5]
    name = buf[pos + 6:pos + 6 + n]
    return n > 0 and len(name) == n and all(32 < c < 127 for c in name)


def walk(buf):
    """Every Section of the stream BUF, in order: 'header' (magic,
    version, configuration), the sections, 'eof' (QEMU_VM_EOF and the
    JSON device description).  Raises ValueError where BUF does not
    parse (or ends early)."""
    if _be32(buf, 0) != MAGIC or _be32(buf, 4) != VERSION:
        raise ValueError('not a QEMU 7.2 migration stream')
    # The configuration section is a vmstate of its own; the first
    # section is ram's START.
    first = buf.find(b'\x03ram\x00\x00\x00\x00')
    if first < 5 or buf[first - 5] != START:
        raise ValueError('no ram section START in the stream')
    pos = first - 5
    header = Section('header', None, None, 0)
    header.end = pos
    out, names = [header], {}
    while pos < len(buf):
        kind = buf[pos]
        if kind == EOF:
            s = Section('eof', None, None, pos)
            pos += 1
            if pos < len(buf) and buf[pos] == VMDESC:
                pos += 5 + _be32(buf, pos + 1)
            s.end = pos
            out.append(s)
            if pos != len(buf):
                raise ValueError('%d bytes after the end of the stream'
                                 % (len(buf) - pos))
            return out
        if kind == COMMAND:
            s = Section('command', None, None, pos)
            pos += 5 + struct.unpack_from('>H', buf, pos + 3)[0]
            s.end = pos
            out.append(s)
            continue
        if kind not in KIND:
            raise ValueError('unknown section type 0x%x at %d' % (kind, pos))
        sid = _be32(buf, pos + 1)
        p = pos + 5
        if kind in (START, FULL):
            n = buf[p]
            names[sid] = buf[p + 1:p + 1 + n].decode()
            p += 1 + n + 8
        idstr = names.get(sid)
        s = Section(KIND[kind], sid, idstr, pos)
        footer = bytes([FOOTER]) + struct.pack('>I', sid)
        if kind == FULL:
            q = p
            while True:
                q = buf.find(footer, q)
                if q < 0:
                    raise ValueError('%s: no footer after %d' % (idstr, pos))
                if _plausible_next(buf, q + 5):
                    break
                q += 1
            p = q
        elif idstr in PAYLOAD:
            p, s.stats = PAYLOAD[idstr](buf, p, kind)
        else:
            raise ValueError('iterable section %r (#%d) at %d: no parser'
                             % (idstr, sid, pos))
        if buf[p:p + 5] != footer:
            raise ValueError('%s: no footer at %d' % (idstr, p))
        pos = s.end = p + 5
        out.append(s)
    raise ValueError('the stream ends without QEMU_VM_EOF')
