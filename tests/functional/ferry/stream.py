"""The sections of a saved migration stream (QEMU 7.2's format).

Enough of the format to find every page record of the "ram" section and
every chunk of the "spapr/htab" section in a stream saved with
"migrate exec:cat > FILE" or recorded on its way to the destination:
the tests count what was really sent and build hostile streams by
editing single records, tests/bench/htab splits a migration's bytes by
section.  sections() walks the START, PART and END sections of the
iterable handlers, which come before the device sections: the walk
starts at the first START of a known section and ends at the first
section that is not START, PART or END.  sections(buf, whole=True)
walks the whole stream as the destination reads it: the header (magic,
version, configuration), the iterable sections, the devices' FULL
sections, COMMAND sections, and EOF with the JSON device description.
A FULL section (vmstate, no length on the wire) is not parsed: it ends
at the first footer for its id that a plausible section follows.  See
migration/savevm.c, migration/ram.c and hw/ppc/spapr.c (htab_save_*).
"""

import struct
import zlib

PAGE = 4096
FLAG_ZERO = 0x02
FLAG_MEM_SIZE = 0x04
FLAG_PAGE = 0x08
FLAG_EOS = 0x10
FLAG_CONTINUE = 0x20
FLAG_XBZRLE = 0x40
FLAG_COMPRESS_PAGE = 0x100
SECTION_EOF, SECTION_START, SECTION_PART, SECTION_END = 0x00, 0x01, 0x02, 0x03
SECTION_FULL, SECTION_VMDESC, SECTION_COMMAND = 0x04, 0x06, 0x08
SECTION_FOOTER = 0x7e
# Not a byte on the wire: the kind of the Section that holds the stream's
# header (magic, version and configuration) in sections(whole=True).
SECTION_HEADER = -1
KIND_NAMES = {SECTION_HEADER: 'header', SECTION_EOF: 'eof',
              SECTION_START: 'start', SECTION_PART: 'part',
              SECTION_END: 'end', SECTION_FULL: 'full',
              SECTION_COMMAND: 'command'}
MAGIC, FILE_VERSION = 0x5145564d, 3
RAM_VERSION = 4
HTAB_VERSION = 1
HTAB_NO_HPT = 0xffffffff
HPTE_SIZE = 16


class Record:
    """One page record: KIND is 'zero', 'page', 'compressed' or 'xbzrle';
    [start, end) its bytes in the stream, [data, end) its payload (for a
    compressed page, after the be32 length)."""

    __slots__ = ('kind', 'block', 'offset', 'start', 'data', 'end')

    def __init__(self, kind, block, offset, start, data, end):
        self.kind, self.block, self.offset = kind, block, offset
        self.start, self.data, self.end = start, data, end

    def __repr__(self):
        return '<%s %s+0x%x @%d>' % (self.kind, self.block, self.offset,
                                     self.start)


class Reader:
    def __init__(self, buf, pos):
        self.buf, self.pos = buf, pos

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise ValueError('stream ends inside a record at %d' % self.pos)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self.take(1)[0]

    def be16(self):
        return struct.unpack('>H', self.take(2))[0]

    def be32(self):
        return struct.unpack('>I', self.take(4))[0]

    def be64(self):
        return struct.unpack('>Q', self.take(8))[0]

    def idstr(self):
        return self.take(self.u8()).decode()


def start_header(idstr, version, instance=0):
    """The bytes of IDSTR's START header after its section id."""
    name = idstr.encode()
    return bytes([len(name)]) + name + struct.pack('>II', instance, version)


def section_start(buf, idstr, version, instance=0):
    """Offset of IDSTR's START section (its 0x01 byte), or None."""
    header = start_header(idstr, version, instance)
    i = buf.find(header)
    while i >= 5:
        if buf[i - 5] == SECTION_START:
            return i - 5
        i = buf.find(header, i + 1)
    return None


def ram_section_start(buf):
    """Offset just after the ram section's START header, and its id."""
    i = section_start(buf, 'ram', RAM_VERSION)
    if i is None:
        raise ValueError('no ram section in the stream')
    return (i + 5 + len(start_header('ram', RAM_VERSION)),
            struct.unpack('>I', buf[i + 1:i + 5])[0])


class Section:
    """One section: KIND is SECTION_START/PART/END (an iterable
    handler's), or with sections(whole=True) SECTION_FULL (a device's
    vmstate), SECTION_COMMAND, SECTION_EOF (QEMU_VM_EOF and the JSON
    device description after it) or SECTION_HEADER (the stream's
    header).  [start, end) its bytes including the section's header and
    footer (SIZE of them), [body, body_end) what its handler reads (a
    COMMAND's data, an EOF's VMDESC part).  SECTION_ID, IDSTR for START,
    PART, END and FULL, INSTANCE and VERSION for START and FULL, COMMAND
    the number of a COMMAND.  A ram section has its page RECORDS; a
    spapr/htab section its HEADER (the be32 that opens every part: the
    shift, -1 or 0) and, when that is 0, its CHUNKS and the offset of its
    END_MARKER."""

    def __init__(self, kind, section_id, idstr, start, body):
        self.kind, self.section_id, self.idstr = kind, section_id, idstr
        self.start, self.body = start, body
        self.body_end = self.end = None
        self.records, self.chunks = [], []
        self.header = self.end_marker = None
        self.instance = self.version = self.command = None

    @property
    def size(self):
        return self.end - self.start

    def __repr__(self):
        names = ''.join(' %s' % x for x in (self.section_id, self.idstr)
                        if x is not None)
        return '<%s%s @%d-%s>' % (KIND_NAMES[self.kind].upper(), names,
                                  self.start, self.end)


class Chunk:
    """One chunk of a spapr/htab part: N_VALID entries from INDEX (at
    [entries, end)), then N_INVALID cleared ones; [start, end) its bytes."""

    __slots__ = ('index', 'n_valid', 'n_invalid', 'start', 'entries', 'end')

    def __init__(self, index, n_valid, n_invalid, start):
        self.index, self.n_valid, self.n_invalid = index, n_valid, n_invalid
        self.start = start
        self.entries = start + 8
        self.end = self.entries + n_valid * HPTE_SIZE

    def __repr__(self):
        return '<chunk %d+%d+%d @%d>' % (self.index, self.n_valid,
                                        self.n_invalid, self.start)


def read_ram_body(r, section, state):
    """SECTION's page records, up to its EOS flag.  A record may continue
    the block of the previous section's last record: STATE keeps it."""
    block = state.get('block')
    while True:
        addr = r.be64()
        flags, offset = addr & (PAGE - 1), addr & ~(PAGE - 1)
        if flags & FLAG_MEM_SIZE:
            total = offset
            while total > 0:
                r.idstr()
                total -= r.be64()
            continue
        if flags & FLAG_EOS:
            state['block'] = block
            return
        start = r.pos - 8
        if not flags & FLAG_CONTINUE:
            block = r.idstr()
        elif block is None:
            raise ValueError('page record without a block at %d' % start)
        if flags & FLAG_ZERO:
            kind = 'zero'
            r.u8()
        elif flags & FLAG_PAGE:
            kind = 'page'
            r.take(PAGE)
        elif flags & FLAG_COMPRESS_PAGE:
            kind = 'compressed'
            r.take(r.be32())
        elif flags & FLAG_XBZRLE:
            kind = 'xbzrle'
            r.u8()
            r.take(struct.unpack('>H', r.take(2))[0])
        else:
            raise ValueError('unknown flags 0x%x at %d' % (flags, start))
        data = start + 8 + (0 if flags & FLAG_CONTINUE else 1 + len(block))
        if kind == 'compressed':
            data += 4
        section.records.append(Record(kind, block, offset, start, data,
                                      r.pos))


def read_htab_body(r, section, state):
    """SECTION's header and, after a 0 header, its chunks up to the end
    marker."""
    section.header = r.be32()
    if section.header:
        return
    while True:
        pos = r.pos
        index, n_valid, n_invalid = struct.unpack('>IHH', r.take(8))
        if not (index or n_valid or n_invalid):
            section.end_marker = pos
            return
        chunk = Chunk(index, n_valid, n_invalid, pos)
        r.take(n_valid * HPTE_SIZE)
        section.chunks.append(chunk)


BODIES = {'ram': (RAM_VERSION, read_ram_body),
          'spapr/htab': (HTAB_VERSION, read_htab_body)}


def plausible_next(buf, pos):
    """True if a FULL section's footer may end at POS: what follows is
    the end of BUF, EOF or another FULL section with a printable id."""
    if pos >= len(buf) or buf[pos] == SECTION_EOF:
        return True
    if buf[pos] != SECTION_FULL or pos + 6 > len(buf):
        return False
    n = buf[pos + 5]
    name = buf[pos + 6:pos + 6 + n]
    return n > 0 and len(name) == n and all(32 < c < 127 for c in name)


def read_full(r, section):
    """Skip FULL SECTION's vmstate up to its footer (not read)."""
    footer = bytes([SECTION_FOOTER]) + struct.pack('>I', section.section_id)
    q = r.pos
    while True:
        q = r.buf.find(footer, q)
        if q < 0:
            raise ValueError('%s: no footer after %d'
                             % (section.idstr, section.start))
        if plausible_next(r.buf, q + 5):
            break
        q += 1
    r.pos = q


def sections(buf, whole=False):
    """Every START, PART and END section of BUF, in stream order, from
    the first START of a section in BODIES; other iterable sections are
    an error, the first section of another kind ends the walk.  WHOLE:
    every section of BUF instead, from a SECTION_HEADER one (everything
    before that first START) to the SECTION_EOF one, which must end BUF;
    a section of an unknown type is an error."""
    starts = [i for i in (section_start(buf, name, version)
                          for name, (version, _) in BODIES.items())
              if i is not None]
    if not starts:
        raise ValueError('no known iterable section in the stream')
    r = Reader(buf, min(starts))
    names, states, result = {}, {}, []
    if whole:
        if buf[:8] != struct.pack('>II', MAGIC, FILE_VERSION):
            raise ValueError('not a QEMU 7.2 migration stream')
        header = Section(SECTION_HEADER, None, None, 0, 8)
        header.body_end = header.end = r.pos
        result.append(header)
    while r.pos < len(buf):
        start = r.pos
        kind = r.u8()
        if kind not in (SECTION_START, SECTION_PART, SECTION_END):
            if not whole:
                return result
            if kind == SECTION_EOF:
                section = Section(kind, None, None, start, r.pos)
                if r.pos < len(buf) and buf[r.pos] == SECTION_VMDESC:
                    r.u8()
                    r.take(r.be32())
                section.body_end = section.end = r.pos
                result.append(section)
                if r.pos != len(buf):
                    raise ValueError('%d bytes after the end of the stream'
                                     % (len(buf) - r.pos))
                return result
            if kind == SECTION_COMMAND:
                command, length = r.be16(), r.be16()
                section = Section(kind, None, None, start, r.pos)
                section.command = command
                r.take(length)
                section.body_end = section.end = r.pos
                result.append(section)
                continue
            if kind != SECTION_FULL:
                raise ValueError('unknown section type 0x%x at %d'
                                 % (kind, start))
        section_id = r.be32()
        if kind in (SECTION_START, SECTION_FULL):
            idstr = r.idstr()
            instance = r.be32()
            version = r.be32()
        if kind == SECTION_FULL:
            section = Section(kind, section_id, idstr, start, r.pos)
            section.instance, section.version = instance, version
            read_full(r, section)
        else:
            if kind == SECTION_START:
                if idstr not in BODIES or BODIES[idstr][0] != version:
                    raise ValueError('unknown iterable section %s version '
                                     '%d at %d' % (idstr, version, start))
                names[section_id] = idstr
            elif section_id not in names:
                raise ValueError('section %d at %d was never started'
                                 % (section_id, start))
            section = Section(kind, section_id, names[section_id], start,
                              r.pos)
            if kind == SECTION_START:
                section.instance, section.version = instance, version
            read_body = BODIES[section.idstr][1]
            read_body(r, section, states.setdefault(section_id, {}))
        section.body_end = r.pos
        if r.u8() != SECTION_FOOTER or r.be32() != section_id:
            raise ValueError('no section footer at %d' % section.body_end)
        section.end = r.pos
        result.append(section)
    if whole:
        raise ValueError('the stream ends without QEMU_VM_EOF')
    return result


def ram_records(buf):
    """Every page record of the ram section, in stream order."""
    return [rec for s in sections(buf) if s.idstr == 'ram'
            for rec in s.records]


def htab_sections(buf):
    """The spapr/htab sections of BUF, in stream order."""
    return [s for s in sections(buf) if s.idstr == 'spapr/htab']


def compress_bound(n):
    """zlib's compressBound(): the most N bytes can deflate to."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def replace_payload(buf, rec, payload):
    """BUF with compressed record REC carrying PAYLOAD (length fixed up)."""
    assert rec.kind == 'compressed'
    return (buf[:rec.data - 4] + struct.pack('>I', len(payload)) + payload +
            buf[rec.end:])


def inflate(buf, rec):
    return zlib.decompress(buf[rec.data:rec.end])
