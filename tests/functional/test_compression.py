"""Migration compression threads (SPEC 2): correctness, stats, faults,
hostile streams, incompressible (random) guests, and interoperation with
Debian's stock QEMU 7.2 at compress-level 0, 1 and 9.

Every migration checks data: the destination's RAM must equal the
source's final RAM and the busy guest must run on.  Streams saved with
"exec:cat > FILE" are parsed (ferry.stream) to count what was really
sent and to build corrupt streams record by record.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import zlib

from ferry import env, wait
from ferry.machine import (Guest, dirty_guest, free_port, incoming,
                           wait_migration)
from ferry.migrate import (FAST_LINK, MigrationPairs, check_destination,
                           check_source_alive, kill_destination_midway,
                           memory_matches, migrate, set_caps,
                           set_params, start_destination, start_dirty_source,
                           wait_loaded)
from ferry import stream
from ferry.ram_image import (anonymous_ram, file_backed_ram, make_image,
                              make_random_image)

SMALL_IMAGE = 'x86-dirty-32m.img'
LSAN = '/usr/lib/x86_64-linux-gnu/liblsan.so.0'
COMPRESSION_FRAMES = ('ram_compress', 'ram_decompress', 'compress_threads')


def enable_compression(vm, **params):
    set_caps(vm, compress=True)
    if params:
        set_params(vm, **params)


def worker_threads(vm):
    """Names of VM's compression threads still alive."""
    names = []
    for comm in glob.glob('/proc/%d/task/*/comm' % vm.get_pid()):
        try:
            with open(comm) as f:
                name = f.read().strip()
        except FileNotFoundError:
            continue
        if name in ('compress', 'decompress'):
            names.append(name)
    return names


def under_lsan(log_prefix):
    """The wrapper that runs QEMU with LeakSanitizer preloaded (no
    rebuild needed): at exit it writes LOG_PREFIX.PID if anything
    leaked."""
    return ['env', 'LD_PRELOAD=' + LSAN, 'LSAN_OPTIONS=exitcode=0:'
            'fast_unwind_on_malloc=0:log_path=' + log_prefix]


def lsan_active(vm):
    with open('/proc/%d/maps' % vm.get_pid()) as f:
        return 'liblsan' in f.read()


def compression_leaks(log_prefix):
    """The leak reports under LOG_PREFIX whose stacks pass through the
    compression code (the rest of QEMU is not this test's business)."""
    leaks = []
    for path in glob.glob(log_prefix + '.*'):
        with open(path) as f:
            for report in f.read().split('\n\n'):
                if 'leak of' in report and \
                        any(fn in report for fn in COMPRESSION_FRAMES):
                    leaks.append(report)
    return leaks


def save_stream(src, path, **params):
    """Migrate stopped SRC to PATH with compression; the final info."""
    src.command('stop')
    enable_compression(src, **params)
    src.command('migrate', uri='exec:cat > %s' % path)
    return wait_migration(src)


def file_destination(like, path, flavour='ferry', name='dst', compress=True,
                     wrapper=()):
    """A destination for LIKE that loads the stream saved in PATH."""
    dst = incoming(like, flavour=flavour, name=name, uri='defer',
                   wrapper=wrapper)
    dst.add_process_args('-S')
    dst.launch()
    if compress:
        enable_compression(dst)
    dst.command('migrate-incoming', uri='exec:cat %s' % path)
    return dst


def wait_passes(src, syncs, timeout=120):
    """Wait until SRC's migration has synced the dirty bitmap SYNCS times
    (or ended)."""
    def synced():
        info = src.command('query-migrate')
        return info['status'] != 'active' or \
            info['ram']['dirty-sync-count'] >= syncs
    wait.until(synced, timeout, lambda: 'migration made no progress: %s'
               % src.command('query-migrate'))


class CompressionPairs(MigrationPairs):
    """Source and destination with compression on, and the migration
    every data check runs on: a busy guest over at least two passes."""

    def pair(self, src_flavour='ferry', dst_flavour='ferry', **params):
        # named threads, so that the tests can see the workers
        src, dst = super().pair(src_flavour, dst_flavour,
                                extra=['-name', 'src,debug-threads=on'])
        enable_compression(src, **params)
        enable_compression(dst, decompress_threads=params.get(
            'compress_threads', 2))
        return src, dst

    def migrate_busy_guest(self, src, dst):
        """Migrate, and let the guest keep writing over several passes;
        then allow a downtime long enough to converge.  Compressed, this
        guest's pages are tiny, so the link looks slow to the downtime
        estimate and the migration would iterate for ever.  Until then the
        downtime limit is short, so that a slow guest (under LeakSanitizer
        on a loaded host) cannot converge before the third pass."""
        set_params(src, max_bandwidth=FAST_LINK, downtime_limit=100)
        src.command('migrate', uri=dst.uri)
        wait_passes(src, 3)
        set_params(src, downtime_limit=60000)
        info = wait_migration(src, timeout=240)
        self.assertEqual(info['status'], 'completed', info)
        self.assertGreaterEqual(info['ram']['dirty-sync-count'], 3,
                                'the migration did not iterate')
        stats = info['compression']
        params = src.command('query-migrate-parameters')
        level = params['compress-level']
        print('%s -> %s, level %d: %d compressed pages (%d bytes), %d plain, '
              '%d zero, %d bytes on the wire'
              % (src.flavour, dst.flavour, level, stats['pages'],
                 stats['compressed-size'], info['ram']['normal'],
                 info['ram']['duplicate'], info['ram']['transferred']))
        if level == 0 and src.flavour == 'ferry':
            # Level 0 deflate only stores: no record would be smaller than
            # the page, so Ferry's workers send every non-zero page plain
            # (counted in ram.normal).  Stock sends the stored streams as
            # compressed pages all the same.
            self.assertEqual(stats['pages'], 0, info)
            self.assertGreater(info['ram']['normal'], 20000, info)
        elif params['compress-wait-thread']:
            self.assertEqual(stats['busy'], 0, info)
            self.assertGreater(stats['pages'], 20000, info)
        else:
            # pages that find every worker busy are sent uncompressed
            self.assertGreater(stats['pages'], 0, info)
        check_destination(self, src, dst)
        return info


class CompressionPrecopy(CompressionPairs, unittest.TestCase):
    def test_wait_thread_threads_and_levels(self):
        for wait_thread in (True, False):
            for threads in (1, 4):
                for level in (1, 9):
                    with self.subTest(wait=wait_thread, threads=threads,
                                      level=level):
                        src, dst = self.pair(compress_wait_thread=wait_thread,
                                             compress_threads=threads,
                                             compress_level=level)
                        self.migrate_busy_guest(src, dst)
                        for vm in (src, dst):
                            vm.shutdown()
                        self.vms = []

    @unittest.skipUnless(os.path.exists(LSAN), 'liblsan0 is not installed')
    def test_cancel_stops_threads_and_retry_succeeds(self):
        """Cancel mid-compression: every worker ends, nothing leaks on
        either side (LeakSanitizer), the guest runs on and a second
        migration succeeds."""
        tmp = tempfile.mkdtemp(prefix='ferry-lsan-')
        self.addCleanup(shutil.rmtree, tmp)
        log = os.path.join(tmp, 'lsan')
        src = dirty_guest(name='src', extra=['-name', 'src,debug-threads=on'],
                          wrapper=under_lsan(log))
        self.vms.append(src)
        src.launch()
        src.wait_serial('FP', timeout=120)
        dst = start_destination(src, wrapper=under_lsan(log))
        self.assertTrue(lsan_active(src) and lsan_active(dst))
        enable_compression(src, compress_threads=4)
        enable_compression(dst, decompress_threads=4)
        set_params(src, max_bandwidth=4 << 20)
        src.command('migrate', uri=dst.uri)
        time.sleep(1.5)
        self.assertEqual(src.command('query-migrate')['status'], 'active')
        self.assertEqual(worker_threads(src).count('compress'), 4)
        self.assertEqual(worker_threads(dst).count('decompress'), 4)
        src.command('migrate_cancel')
        self.assertEqual(wait_migration(src)['status'], 'cancelled')
        wait.until(lambda: not worker_threads(src), 10,
                   lambda: 'workers outlive cancel: %s' % worker_threads(src))
        check_source_alive(self, src)
        dst.wait(timeout=30)
        dst2 = start_destination(src)
        self.vms.append(dst2)
        enable_compression(dst2)
        self.migrate_busy_guest(src, dst2)
        src.shutdown()
        self.assertEqual(compression_leaks(log), [])

    def test_destination_killed_leaves_source_running(self):
        src, dst = self.pair()
        info = kill_destination_midway(src, dst, 4 << 20, after=1.5)
        self.assertEqual(info['status'], 'failed', info)
        self.assertEqual(worker_threads(src), [])
        check_source_alive(self, src)


class CompressionInterface(unittest.TestCase):
    """The capability, parameters, their -global forms, HMP and errors,
    exactly as stock 7.2 has them."""

    BAD_PARAMETERS = [{'compress-level': 10}, {'compress-threads': 0},
                      {'decompress-threads': 0}, {'compress-threads': 256},
                      {'compress-level': -1}, {'compress-wait-thread': 'yes'}]

    def machine(self, flavour, *args):
        vm = Guest(flavour, 'x86_64', 'iface-' + flavour,
                   args=['-machine', 'pc-i440fx-7.2', '-S', *args])
        vm.launch()
        self.addCleanup(vm.shutdown)
        return vm

    def errors(self, vm):
        """What VM answers to bad compression settings."""
        out = []
        for params in self.BAD_PARAMETERS:
            r = vm.qmp('migrate-set-parameters', **params)
            out.append(r.get('error', {}).get('desc'))
        set_caps(vm, multifd=True)
        r = vm.qmp('migrate-set-capabilities', capabilities=[
            {'capability': 'compress', 'state': True}])
        out.append(r.get('error', {}).get('desc'))
        set_caps(vm, multifd=False)
        return out

    def test_defaults_and_global_forms(self):
        vm = self.machine('ferry')
        p = vm.command('query-migrate-parameters')
        self.assertEqual((p['compress-level'], p['compress-threads'],
                          p['compress-wait-thread'], p['decompress-threads']),
                         (1, 8, True, 2))
        vm = self.machine('ferry', '-global', 'migration.x-compress=on',
                          '-global', 'migration.x-compress-level=7',
                          '-global', 'migration.x-compress-threads=3',
                          '-global', 'migration.x-compress-wait-thread=off',
                          '-global', 'migration.x-decompress-threads=5')
        p = vm.command('query-migrate-parameters')
        self.assertEqual((p['compress-level'], p['compress-threads'],
                          p['compress-wait-thread'], p['decompress-threads']),
                         (7, 3, False, 5))
        caps = {c['capability']: c['state']
                for c in vm.command('query-migrate-capabilities')}
        self.assertTrue(caps['compress'])

    def test_hmp(self):
        vm = self.machine('ferry')
        for cmd in ('migrate_set_capability compress on',
                    'migrate_set_parameter compress-level 9',
                    'migrate_set_parameter compress-threads 4',
                    'migrate_set_parameter compress-wait-thread off',
                    'migrate_set_parameter decompress-threads 3'):
            self.assertEqual(vm.command('human-monitor-command',
                                        command_line=cmd), '')
        out = vm.command('human-monitor-command',
                         command_line='info migrate_parameters')
        for line in ('compress-level: 9', 'compress-threads: 4',
                     'compress-wait-thread: off', 'decompress-threads: 3'):
            self.assertIn(line, out)
        out = vm.command('human-monitor-command',
                         command_line='info migrate_capabilities')
        self.assertIn('compress: on', out)

    def test_errors(self):
        ferry = self.errors(self.machine('ferry'))
        self.assertEqual(ferry[:3], [
            "Parameter 'compress_level' expects a value between 0 and 9",
            "Parameter 'compress_threads' expects a value between 1 and 255",
            "Parameter 'decompress_threads' expects a value between 1 and "
            "255"])
        self.assertEqual(ferry[-1], 'Multifd is not compatible with compress')
        self.assertTrue(all(ferry), ferry)
        if env.stock_binary('x86_64'):
            self.assertEqual(ferry, self.errors(self.machine('stock')))


class CompressionStats(unittest.TestCase):
    """query-migrate's compression stats against the stream itself."""

    def test_stats_count_what_was_sent(self):
        tmp = tempfile.mkdtemp(prefix='ferry-compress-')
        self.addCleanup(shutil.rmtree, tmp)
        path = os.path.join(tmp, 'stream')
        src = start_dirty_source('ferry')
        self.addCleanup(src.shutdown)
        # a slow link spreads the migration over >1 s, so that the rate
        # statistics (computed once a second) are computed at all
        info = save_stream(src, path, compress_threads=2,
                           max_bandwidth=512 << 10)
        self.assertEqual(info['status'], 'completed', info)
        with open(path, 'rb') as f:
            buf = f.read()
        records = stream.ram_records(buf)
        compressed = [r for r in records if r.kind == 'compressed']
        zero = [r for r in records if r.kind == 'zero']
        stats = info['compression']
        self.assertEqual(stats['pages'], len(compressed))
        self.assertEqual(stats['compressed-size'],
                         sum(r.end - r.data + 4 for r in compressed))
        self.assertEqual(info['ram']['duplicate'], len(zero))
        self.assertGreater(stats['compression-rate'], 1.0, stats)
        self.assertEqual(stats['busy'], 0)
        hmp = src.command('human-monitor-command', command_line='info migrate')
        self.assertIn('compression pages: %d pages' % len(compressed), hmp)
        for r in compressed[::997]:
            self.assertEqual(len(stream.inflate(buf, r)), stream.PAGE)
        # and the stream loads: the destination holds the source's RAM
        dst = file_destination(src, path)
        self.addCleanup(dst.shutdown)
        wait_loaded(dst)
        self.assertIsNone(memory_matches(src, dst))


class HostileStreams(unittest.TestCase):
    """A destination fed a corrupt compressed page fails the incoming
    migration with a clear error, exits cleanly, never crashes."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='ferry-hostile-')
        cls.src = start_dirty_source('ferry', image=SMALL_IMAGE, mem='40M')
        cls.path = os.path.join(cls.tmp, 'good')
        info = save_stream(cls.src, cls.path)
        assert info['status'] == 'completed', info
        with open(cls.path, 'rb') as f:
            cls.buf = f.read()
        cls.records = stream.ram_records(cls.buf)
        compressed = [r for r in cls.records if r.kind == 'compressed']
        cls.victim = compressed[len(compressed) // 2]

    @classmethod
    def tearDownClass(cls):
        cls.src.shutdown()
        shutil.rmtree(cls.tmp)

    def load(self, buf, compress=True, wrapper=()):
        path = os.path.join(self.tmp, 'hostile')
        with open(path, 'wb') as f:
            f.write(buf)
        dst = file_destination(self.src, path, compress=compress,
                               wrapper=wrapper)
        try:
            dst.wait(timeout=300)
        finally:
            dst.shutdown()
        log = dst.get_log() or ''
        self.assertEqual(dst.exitcode(), 1, 'destination did not fail '
                         'cleanly (exit %s):\n%s' % (dst.exitcode(), log))
        self.assertIn('load of migration failed', log)
        return log

    def page_error(self, why):
        """The destination's message for the victim page failing WHY."""
        return ('Compressed page cannot be loaded: %s (RAMBlock %s, '
                'offset 0x%x)' % (why, self.victim.block, self.victim.offset))

    def assert_page_error(self, log, *whys):
        """LOG says the victim page failed for one of WHYS, naming its
        RAMBlock and its offset in the block."""
        self.assertTrue(any(self.page_error(why) in log for why in whys),
                        'no %r in the log:\n%s' % (self.page_error(whys[0]),
                                                   log))

    def victim_payload(self):
        return self.buf[self.victim.data:self.victim.end]

    def with_payload(self, payload):
        return stream.replace_payload(self.buf, self.victim, payload)

    def corrupt_payload(self):
        data = bytearray(self.victim_payload())
        for i in range(2, len(data) - 4, 3):
            data[i] ^= 0x5a
        return self.with_payload(bytes(data))

    def test_corrupt_page(self):
        log = self.load(self.corrupt_payload())
        self.assert_page_error(log, 'its deflate data is corrupt or truncated',
                               'its zlib checksum does not match '
                               '(incorrect data check)')

    def test_victim_is_a_real_page(self):
        """The victim's offset is where its page is in the block: the
        source's RAM there is what its record inflates to."""
        v = self.victim
        self.assertEqual(v.block, 'pc.ram')
        self.assertEqual(stream.inflate(self.buf, v),
                         self.src.read_memory(v.offset, stream.PAGE))

    def test_not_a_zlib_stream(self):
        data = bytearray(self.victim_payload())
        data[0] = 0x00      # CM 0 is no deflate, and the FCHECK fails
        log = self.load(self.with_payload(bytes(data)))
        self.assert_page_error(log, 'it is not a valid zlib stream')

    def test_bad_checksum(self):
        """The deflate data is intact, its adler32 trailer is not."""
        data = bytearray(self.victim_payload())
        data[-2] ^= 0x01
        log = self.load(self.with_payload(bytes(data)))
        self.assert_page_error(log, 'its zlib checksum does not match '
                               '(incorrect data check)')

    def test_truncated_deflate(self):
        """A record that ends halfway through its deflate data."""
        data = self.victim_payload()
        log = self.load(self.with_payload(data[:len(data) // 2]))
        self.assert_page_error(log, 'its deflate data is corrupt or truncated')

    def test_truncated_checksum(self):
        """The deflate data is whole, half of its adler32 is missing."""
        log = self.load(self.with_payload(self.victim_payload()[:-2]))
        self.assert_page_error(log, 'its zlib stream is truncated')

    def test_shorter_than_a_header(self):
        log = self.load(self.with_payload(self.victim_payload()[:1]))
        self.assert_page_error(log, 'its zlib stream is truncated')

    def test_length_over_bound(self):
        bound = stream.compress_bound(stream.PAGE)
        v = self.victim
        buf = (self.buf[:v.data - 4] + (bound + 1).to_bytes(4, 'big') +
               self.buf[v.data:])
        log = self.load(buf)
        self.assertIn('Invalid compressed data length: %d' % (bound + 1), log)

    def test_inflates_to_less_than_a_page(self):
        buf = stream.replace_payload(self.buf, self.victim,
                                     zlib.compress(b'\1' * 100))
        log = self.load(buf)
        self.assert_page_error(log, 'it inflates to less than one page')

    def test_inflates_to_more_than_a_page(self):
        buf = stream.replace_payload(self.buf, self.victim,
                                     zlib.compress(b'\1' * 2 * stream.PAGE))
        log = self.load(buf)
        self.assert_page_error(log, 'it inflates to more than one page')

    def test_data_after_the_zlib_stream(self):
        v = self.victim
        payload = self.buf[v.data:v.end] + b'\0\0\0\0'
        log = self.load(stream.replace_payload(self.buf, v, payload))
        self.assert_page_error(log,
                               'it has data after the end of its zlib stream')

    def test_compressed_page_without_the_capability(self):
        log = self.load(self.buf, compress=False)
        self.assertIn('Received an unexpected compressed page', log)

    def test_intact_stream_loads(self):
        dst = file_destination(self.src, self.path)
        self.addCleanup(dst.shutdown)
        wait_loaded(dst)
        self.assertIsNone(memory_matches(self.src, dst))

    @unittest.skipUnless(shutil.which('valgrind'), 'valgrind is not installed')
    def test_corrupt_page_under_valgrind(self):
        log = self.load(self.corrupt_payload(), wrapper=[
            'valgrind', '--error-exitcode=99', '--errors-for-leak-kinds=none',
            '--trace-children=no'])
        self.assert_page_error(log, 'its deflate data is corrupt or truncated',
                               'its zlib checksum does not match '
                               '(incorrect data check)')
        self.assertIn('ERROR SUMMARY: 0 errors', log)


class CompressionAllocations(unittest.TestCase):
    """No heap allocation per page on either side: count every malloc of
    both processes (an LD_PRELOAD counter) across migrations of 64 and
    256 MiB guests, and require the count not to grow with the pages."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='ferry-malloc-')
        cls.counter = os.path.join(cls.tmp, 'malloc_count.so')
        subprocess.run(['gcc', '-O2', '-shared', '-fPIC', '-o', cls.counter,
                        os.path.join(os.path.dirname(stream.__file__),
                                     'malloc_count.c'), '-ldl'], check=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def counted(self, name):
        """(wrapper, path): a wrapper that counts QEMU's allocations into
        the file at PATH."""
        path = os.path.join(self.tmp, name + '.count')
        return ['env', 'LD_PRELOAD=' + self.counter,
                'FERRY_MALLOC_COUNT=' + path], path

    @staticmethod
    def read_count(path):
        with open(path, 'rb') as f:
            return int.from_bytes(f.read(8), 'little')

    def migrate(self, mem_mib):
        """(pages sent, source allocations, destination allocations)
        during one compressed migration of a MEM_MIB guest."""
        image = make_image(os.path.join(self.tmp, 'ram-%d' % mem_mib), mem_mib)
        port = free_port()
        src_wrapper, src_count = self.counted('src-%d' % mem_mib)
        dst_wrapper, dst_count = self.counted('dst-%d' % mem_mib)
        counts = src_count, dst_count
        src = Guest('ferry', 'x86_64', 'src', wrapper=src_wrapper,
                    args=file_backed_ram(image, mem_mib) + ['-S'])
        dst = Guest('ferry', 'x86_64', 'dst', wrapper=dst_wrapper,
                    args=anonymous_ram(mem_mib) + [
                        '-S', '-incoming', 'tcp:127.0.0.1:%d' % port])
        try:
            src.launch()
            dst.launch()
            for vm in (src, dst):
                set_caps(vm, compress=True, events=True)
                set_params(vm, compress_threads=2, decompress_threads=2)
            set_params(src, max_bandwidth=FAST_LINK)
            before = [self.read_count(c) for c in counts]
            src.command('migrate', uri='tcp:127.0.0.1:%d' % port)
            for vm in (src, dst):
                vm.event_wait('MIGRATION', timeout=300,
                              match={'data': {'status': 'completed'}})
            after = [self.read_count(c) for c in counts]
            info = src.command('query-migrate')
        finally:
            src.shutdown()
            dst.shutdown()
        self.assertGreater(before[0], 1000, 'the counter counted nothing')
        pages = info['compression']['pages'] + info['ram']['duplicate']
        return pages, after[0] - before[0], after[1] - before[1]

    def test_allocations_do_not_grow_with_pages(self):
        small, large = self.migrate(64), self.migrate(256)
        print('pages, source and destination allocations: 64 MiB %s, '
              '256 MiB %s' % (small, large))
        extra_pages = large[0] - small[0]
        self.assertGreater(extra_pages, 40000)
        for side, a, b in (('source', small[1], large[1]),
                           ('destination', small[2], large[2])):
            # One allocation per page would add extra_pages.  What does
            # grow is the base's qio_channel_writev_full_all(), which
            # copies its iovec array on every flush of the stream buffer
            # (once per 32 KiB sent, about one per 13 pages here; stock
            # does the same), plus timers over a longer migration.
            self.assertLess(b - a, extra_pages // 10,
                            '%s allocations grow with pages: %d for %d MiB, '
                            '%d for %d MiB' % (side, a, 64, b, 256))


@unittest.skipUnless(env.stock_binary('x86_64'),
                     "Debian's qemu-system-x86 is not installed")
class IncompressibleGuest(unittest.TestCase):
    """A guest whose RAM is random (as encrypted guest memory is): no page
    compresses, so Ferry's workers send every page as a plain page, which
    a stock 7.2 destination with compression on loads, and the migration
    costs no more wire bytes than plain precopy."""

    MEM_MIB = 64
    BLOCK = 'mem'       # file_backed_ram()'s memory backend

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='ferry-random-')
        cls.image = make_random_image(os.path.join(cls.tmp, 'random.img'),
                                      cls.MEM_MIB)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def source(self):
        src = Guest('ferry', 'x86_64', 'src',
                    args=file_backed_ram(self.image, self.MEM_MIB) + ['-S'])
        src.launch()
        self.addCleanup(src.shutdown)
        return src

    def stock_destination(self, compress):
        dst = Guest('stock', 'x86_64', 'dst', args=anonymous_ram(
            self.MEM_MIB) + ['-S', '-incoming', 'defer'])
        dst.launch()
        self.addCleanup(dst.shutdown)
        if compress:
            enable_compression(dst, decompress_threads=2)
        dst.uri = 'tcp:127.0.0.1:%d' % free_port()
        dst.command('migrate-incoming', uri=dst.uri)
        return dst

    def migrate_to_stock(self, compress):
        """Migrate a fresh source to a stock destination, with or without
        compression; query-migrate's last answer."""
        src, dst = self.source(), self.stock_destination(compress)
        if compress:
            enable_compression(src, compress_threads=2)
        t0 = time.monotonic()
        info = migrate(src, dst, max_bandwidth=FAST_LINK)
        took = time.monotonic() - t0
        self.assertEqual(info['status'], 'completed', info)
        wait_loaded(dst)
        self.assertIsNone(memory_matches(src, dst),
                          'destination RAM differs')
        print('random guest, %s: %d bytes on the wire, %d plain pages, '
              '%d compressed, %.2f s' % (
                  'compressed' if compress else 'plain precopy',
                  info['ram']['transferred'], info['ram']['normal'],
                  info.get('compression', {}).get('pages', 0), took))
        return info

    def test_no_more_wire_bytes_than_plain_precopy(self):
        compressed = self.migrate_to_stock(compress=True)
        plain = self.migrate_to_stock(compress=False)
        pages = self.MEM_MIB << 20 >> 12
        self.assertGreaterEqual(compressed['ram']['normal'], pages,
                                compressed)
        wire, plain_wire = (compressed['ram']['transferred'],
                            plain['ram']['transferred'])
        print('random guest: %.4f times plain precopy\'s wire bytes'
              % (wire / plain_wire))
        self.assertLessEqual(wire, plain_wire * 1.01)

    def test_random_pages_are_sent_plain(self):
        """The stream itself: every page of the random block is a plain
        page record, and ram.normal counts exactly the plain records."""
        path = os.path.join(self.tmp, 'stream')
        info = save_stream(self.source(), path, compress_threads=2)
        self.assertEqual(info['status'], 'completed', info)
        with open(path, 'rb') as f:
            records = stream.ram_records(f.read())
        os.unlink(path)
        mine = [r for r in records if r.block == self.BLOCK]
        kinds = {k: sum(r.kind == k for r in mine)
                 for k in set(r.kind for r in mine)}
        print('random block records:', kinds)
        self.assertEqual(kinds, {'page': self.MEM_MIB << 20 >> 12})
        self.assertEqual(sorted(r.offset for r in mine),
                         list(range(0, self.MEM_MIB << 20, stream.PAGE)))
        self.assertEqual(info['ram']['normal'],
                         sum(r.kind == 'page' for r in records), info)
        self.assertEqual(info['compression']['pages'],
                         sum(r.kind == 'compressed' for r in records), info)


@unittest.skipUnless(env.stock_binary('x86_64'),
                     "Debian's qemu-system-x86 is not installed")
class CompressionStockInterop(CompressionPairs, unittest.TestCase):
    """Stock 7.2 and Ferry migrate to each other with compression on."""

    def interop(self, src_flavour, dst_flavour, level):
        src, dst = self.pair(src_flavour, dst_flavour, compress_threads=2,
                             compress_level=level)
        self.migrate_busy_guest(src, dst)

    def test_stock_to_ferry_level_0(self):
        self.interop('stock', 'ferry', 0)

    def test_stock_to_ferry_level_1(self):
        self.interop('stock', 'ferry', 1)

    def test_stock_to_ferry_level_9(self):
        self.interop('stock', 'ferry', 9)

    def test_ferry_to_stock_level_0(self):
        self.interop('ferry', 'stock', 0)

    def test_ferry_to_stock_level_1(self):
        self.interop('ferry', 'stock', 1)

    def test_ferry_to_stock_level_9(self):
        self.interop('ferry', 'stock', 9)


if __name__ == '__main__':
    unittest.main()
