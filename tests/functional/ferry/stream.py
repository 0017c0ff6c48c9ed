"""The RAM records of a saved migration stream (QEMU 7.2's format).

Enough of the format to find every page record of the "ram" section in a
stream saved with "migrate exec:cat > FILE": the tests count what was
really sent and build hostile streams by editing single records.  Device
sections are not parsed; the walk starts at the ram section's START and
ends after its END.
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
SECTION_START, SECTION_PART, SECTION_END = 0x01, 0x02, 0x03
SECTION_FOOTER = 0x7e
RAM_VERSION = 4


class Record:
    """One page record: KIND is 'zero', 'page', 'compressed' or 'xbzrle';
    [start, end) its bytes in the stream, [data, end) its payload (for a
    compressed page, after the be32 length)."""

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

    def be32(self):
        return struct.unpack('>I', self.take(4))[0]

    def be64(self):
        return struct.unpack('>Q', self.take(8))[0]

    def idstr(self):
        return self.take(self.u8()).decode()


def ram_section_start(buf):
    """Offset just after the ram section's START header, and its id."""
    name = b'\x03ram' + struct.pack('>II', 0, RAM_VERSION)
    i = buf.find(name)
    if i < 5 or buf[i - 5] != SECTION_START:
        raise ValueError('no ram section in the stream')
    return i + len(name), struct.unpack('>I', buf[i - 4:i])[0]


def ram_records(buf):
    """Every page record of the ram section, in stream order."""
    pos, section_id = ram_section_start(buf)
    r = Reader(buf, pos)
    records, block, kind_of_section = [], None, SECTION_START
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
            if r.u8() != SECTION_FOOTER or r.be32() != section_id:
                raise ValueError('no section footer at %d' % r.pos)
            if kind_of_section == SECTION_END:
                return records
            kind_of_section = r.u8()
            if kind_of_section not in (SECTION_PART, SECTION_END) or \
                    r.be32() != section_id:
                raise ValueError('ram section interrupted at %d' % r.pos)
            continue
        start = r.pos - 8
        if not flags & FLAG_CONTINUE:
            block = r.idstr()
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
        records.append(Record(kind, block, offset, start, data, r.pos))


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
