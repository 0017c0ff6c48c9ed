"""Hostile spapr/htab streams: Ferry refuses them with a clear error.

One real migration stream of a hash-MMU pseries guest (Debian's ppc64el
kernel on a POWER8 CPU, 1 GiB, so a 2^23-byte table that the machine
may resize to 2^24) is saved with "migrate exec:cat > FILE" once for
the class.  ferry.stream walks its iterable sections (ram and
spapr/htab, interleaved) to find the spapr/htab setup header, its parts,
their chunks and end markers, and each test edits those bytes and loads
the result into a Ferry destination and into Debian's stock 7.2 at once.

Ferry must fail the incoming migration the way any bad stream fails in
7.2: the load returns an error, QEMU prints "load of migration failed",
sets the state to failed and exits with status 1 (7.2's
process_incoming_migration_co() calls exit(); upstream's exit-on-error
parameter, which keeps the destination running, came with 9.0).  So
"did not crash" is exit status 1, not a signal or a hang, and the
message on stderr must name spapr/htab and what was wrong.  What stock 7.2 does with the same bytes
(a crash, an abort, a table of the wrong size loaded silently) is
recorded, not asserted, except where it is the point of the case; each
test prints "CASE: stock: ..., ferry: ...".
"""

import collections
import os
import re
import shutil
import signal
import struct
import tempfile
import time
import unittest

from ferry import env, stream, wait
from ferry.linux import linux_guest
from ferry.machine import incoming, wait_migration
from ferry.migrate import FAST_LINK, set_params

MEM = '1G'
# spapr_hpt_shift_for_ramsize(1 GiB): a table of 1/128 of RAM
SHIFT = 23
# With resize-hpt (the default of pseries-7.2) the guest may ask for one
# order more: what the destination's machine allows.
MAX_SHIFT = SHIFT + 1
ENTRIES = (1 << SHIFT) // stream.HPTE_SIZE
SCRIPT = 'echo READY\nsleep 100000\n'
# A destination that neither fails nor finishes loading by then hangs.
LOAD_TIMEOUT = 30


# What a destination did with a stream: KIND is 'exit', 'loaded' or
# 'hang'; CODE its exit status (negative: the signal); LOG its output;
# TEXT all of it in one line.
Outcome = collections.namedtuple('Outcome', 'kind code log text')


def describe(vm, log):
    """One line saying how VM, which exited, ended: its exit status or
    signal and the last of the messages in its LOG (without the
    program's name)."""
    errors = [re.sub(r'^\S*qemu-system-\w+: ', '', line)
              for line in log.splitlines()
              if line.strip() and 'qemu received signal' not in line]
    text = '; '.join(errors[-3:])
    code = vm.exitcode()
    if code < 0:
        return 'killed by %s%s' % (signal.Signals(-code).name,
                                   ' (%s)' % text if text else '')
    return 'exit %d: %s' % (code, text)


class HostileHtab(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='ferry-htab-hostile-')
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.stock = env.stock_binary('ppc64')
        # POWER8 has no radix MMU: the guest runs on a hash table.  The
        # later -m wins over linux_guest()'s 512M.
        src = linux_guest(SCRIPT, target='ppc64', name='src',
                          extra=('-cpu', 'POWER8', '-m', MEM))
        cls.src = src
        # Destinations use its initrd.
        cls.addClassCleanup(shutil.rmtree, src.tmpdir, ignore_errors=True)
        src.launch()
        try:
            src.wait_serial('READY', timeout=240)
            time.sleep(2)
            src.command('stop')
            cls.table = os.path.join(cls.tmp, 'src.hpt')
            src.command('x-spapr-htab-dump', filename=cls.table)
            cls.path = os.path.join(cls.tmp, 'good')
            set_params(src, max_bandwidth=FAST_LINK)
            src.command('migrate', uri='exec:cat > %s' % cls.path)
            info = wait_migration(src, timeout=120)
            assert info['status'] == 'completed', info
        finally:
            src.shutdown()
        with open(cls.path, 'rb') as f:
            cls.buf = f.read()
        cls.htab = stream.htab_sections(cls.buf)
        cls.start = cls.htab[0]
        # The first part that carries entries, and its first chunk with
        # the most of them.
        cls.part = next(s for s in cls.htab[1:] if s.chunks)
        cls.chunk = max(cls.part.chunks, key=lambda c: c.n_valid)

    # --- loading ---

    def destination(self, flavour, path):
        """A paused destination loading PATH with "migrate-incoming"."""
        dst = incoming(self.src, flavour=flavour, name='dst-' + flavour,
                       uri='defer')
        self.addCleanup(shutil.rmtree, dst.tmpdir, ignore_errors=True)
        dst.add_process_args('-S')
        dst.launch()
        dst.command('migrate-incoming', uri='exec:cat %s' % path)
        dst.incoming_at = time.monotonic()
        return dst

    @staticmethod
    def settle(dst, timeout):
        """'exit' once DST has exited, 'loaded' once it has loaded the
        whole stream, 'hang' if neither happened within TIMEOUT
        seconds."""
        def settled():
            if not dst.is_running():
                return 'exit'
            try:
                status = dst.command('query-status')['status']
            except Exception:   # it died under the command: poll again
                return None
            return 'loaded' if status != 'inmigrate' else None
        try:
            kind = wait.until(settled, timeout, '', interval=0.2)
        except AssertionError:
            kind = 'hang'
        return kind

    @staticmethod
    def rss_mib(dst):
        with open('/proc/%d/status' % dst.get_pid()) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) // 1024
        return None

    def load(self, path):
        """Load PATH into a Ferry and a stock destination at once; an
        Outcome for each flavour.  A destination that loaded the stream
        is left running, in self.loaded."""
        vms = {'ferry': self.destination('ferry', path)}
        if self.stock:
            vms['stock'] = self.destination('stock', path)
        results = {}
        self.loaded = {}
        try:
            for flavour, dst in vms.items():
                kind = self.settle(dst, LOAD_TIMEOUT)
                took = time.monotonic() - dst.incoming_at
                if kind == 'loaded':
                    self.loaded[flavour] = dst
                    results[flavour] = Outcome(
                        kind, None, '', 'loaded without error in '
                        '%.1f s (status %s, RSS %d MiB)'
                        % (took, dst.command('query-status')['status'],
                           self.rss_mib(dst)))
                    continue
                dst.shutdown(hard=True)
                log = dst.get_log() or ''
                results[flavour] = Outcome(
                    kind, dst.exitcode(), log,
                    'still loading after %d s (hang)' % LOAD_TIMEOUT
                    if kind == 'hang' else describe(dst, log))
        except BaseException:
            for dst in vms.values():
                dst.shutdown(hard=True)
            raise
        for dst in self.loaded.values():
            self.addCleanup(dst.shutdown, hard=True)
        if not self.stock:
            results['stock'] = Outcome(None, None, '', 'not installed')
        return results

    def load_edited(self, buf, name):
        path = os.path.join(self.tmp, name)
        with open(path, 'wb') as f:
            f.write(buf)
        try:
            return self.load(path)
        finally:
            os.unlink(path)

    def assert_refused(self, buf, name, message):
        """BUF makes Ferry fail the incoming migration with MESSAGE (a
        spapr/htab error) and exit 1; prints stock's and Ferry's
        behaviour."""
        results = self.load_edited(buf, name)
        ferry, stock = results['ferry'], results['stock']
        print('%s: stock: %s, ferry: %s' % (name, stock.text, ferry.text))
        self.assertEqual(ferry.kind, 'exit', 'Ferry did not fail the load: '
                         '%s' % ferry.text)
        self.assertEqual(ferry.code, 1, 'Ferry did not exit cleanly:\n%s'
                         % ferry.log)
        self.assertIn(message, ferry.log)
        self.assertIn('load of migration failed', ferry.log)
        return stock

    # --- stream edits ---

    def edited(self, offset, data):
        return self.buf[:offset] + data + self.buf[offset + len(data):]

    def with_shift(self, shift):
        return self.edited(self.start.body, struct.pack('>I', shift))

    def with_chunk_index(self, index):
        return self.edited(self.chunk.start, struct.pack('>I', index))

    # --- the cases ---

    def test_stream_is_what_was_recorded(self):
        """The walk found a hash table's stream: the setup header has
        the shift of a 1 GiB machine, and the parts carry the source's
        valid entries, each once (the guest was stopped)."""
        self.assertEqual(self.start.kind, stream.SECTION_START)
        self.assertEqual(self.start.header, SHIFT)
        self.assertEqual(self.htab[-1].kind, stream.SECTION_END)
        with open(self.table, 'rb') as f:
            dump = f.read()
        self.assertEqual(dump[:12], b'FERRYHPT' + struct.pack('>I', SHIFT))
        sent = {}
        for part in self.htab[1:]:
            self.assertEqual(part.header, 0)
            for c in part.chunks:
                for i in range(c.n_valid):
                    e = c.entries + i * stream.HPTE_SIZE
                    sent[c.index + i] = self.buf[e:e + stream.HPTE_SIZE]
        valid = {struct.unpack('>I', dump[i:i + 4])[0]: dump[i + 4:i + 20]
                 for i in range(12, len(dump), 20)}
        self.assertGreater(len(valid), 100)
        self.assertEqual(sent, valid)

    def test_intact_stream_loads(self):
        """The unedited stream loads into Ferry, with the same table (and
        into stock: the RSS to compare the other cases' with)."""
        results = self.load(self.path)
        print('intact: stock: %s, ferry: %s' % (results['stock'].text,
                                                results['ferry'].text))
        self.assertIn('ferry', self.loaded, results['ferry'].log)
        table = os.path.join(self.tmp, 'dst.hpt')
        self.loaded['ferry'].command('x-spapr-htab-dump', filename=table)
        with open(table, 'rb') as a, open(self.table, 'rb') as b:
            self.assertTrue(a.read() == b.read(), 'the tables differ')

    def shift_message(self, shift):
        return ('spapr/htab: the stream\'s hash page table has shift %d, '
                'this machine allows 18..%d' % (shift, MAX_SHIFT))

    def test_shift_60(self):
        """A 2^60-byte table: stock 7.2 tries to allocate it."""
        self.assert_refused(self.with_shift(60), 'shift-60',
                            self.shift_message(60))

    def test_shift_30_on_1g(self):
        """A header that disagrees with the destination's machine: a
        1 GiB table, 64 times what a 1 GiB guest can have."""
        self.assert_refused(self.with_shift(30), 'shift-30-on-1G',
                            self.shift_message(30))

    def test_chunk_past_the_table(self):
        c = self.chunk
        index = ENTRIES - c.n_valid - c.n_invalid + 1
        self.assert_refused(
            self.with_chunk_index(index), 'chunk-past-the-table',
            'spapr/htab: chunk at %d of %d+%d entries is outside the table '
            'of %d entries' % (index, c.n_valid, c.n_invalid, ENTRIES))

    def test_chunk_index_wraps(self):
        """index + n_valid wraps in 32 bits: 0xffffffff + 1 is 0."""
        c = self.chunk
        self.assertGreaterEqual(c.n_valid, 1)
        self.assert_refused(
            self.with_chunk_index(0xffffffff), 'chunk-index-wraps',
            'spapr/htab: chunk at 4294967295 of %d+%d entries is outside '
            'the table of %d entries' % (c.n_valid, c.n_invalid, ENTRIES))

    def test_truncated_chunk(self):
        """The stream ends in the middle of a chunk's entries."""
        c = self.chunk
        cut = c.entries + c.n_valid * stream.HPTE_SIZE // 2
        self.assert_refused(
            self.buf[:cut], 'truncated-chunk',
            'spapr/htab: stream ends inside the chunk at %d (%d valid '
            'entries)' % (c.index, c.n_valid))

    def test_no_end_marker_then_next_section(self):
        """A part's chunks are followed by its footer and the next
        section instead of { 0, 0, 0 }: those bytes read as a chunk."""
        m = self.part.end_marker
        buf = self.buf[:m] + self.buf[m + 8:]
        index, n_valid, n_invalid = struct.unpack('>IHH', buf[m:m + 8])
        self.assertEqual(index >> 24, stream.SECTION_FOOTER)
        self.assert_refused(
            buf, 'no-end-marker-then-next-section',
            'spapr/htab: chunk at %d of %d+%d entries is outside the table '
            'of %d entries' % (index, n_valid, n_invalid, ENTRIES))

    def test_no_end_marker_at_end_of_stream(self):
        """A part's chunks end where the stream ends."""
        self.assert_refused(
            self.buf[:self.part.end_marker], 'no-end-marker-at-end-of-stream',
            'spapr/htab: stream ends before the end marker')

    def test_chunks_without_a_table(self):
        """A radix guest's setup header (-1: no table) followed by the
        parts of a hash table."""
        self.assert_refused(
            self.with_shift(stream.HTAB_NO_HPT), 'chunks-without-a-table',
            'spapr/htab: entries for a guest without a hash page table '
            '(no size header came first)')


if __name__ == '__main__':
    unittest.main()
