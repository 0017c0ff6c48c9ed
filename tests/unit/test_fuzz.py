"""Ferry's libFuzzer targets (tests/fuzz) build and survive a short run.

Each target (the page decoder of migration compression, the VFIO device
stream's loader, the sPAPR HTAB stream's loader, the vring engine's walk
of hostile rings) is built with clang, ASan and UBSan, seeded with valid and
nearly valid inputs, and run for a fixed number of executions: any crash,
sanitizer report or failed assertion fails the test.  Longer campaigns
are run by hand (tests/fuzz/build prints how).  The vring engine's unit
test also runs once under ASan and UBSan, for its hostile cases.
"""

import os
import re
import shutil
import subprocess
import zlib

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
PAGE = 4096
RUNS = 2000000
VRING_RUNS = 50000


def seeds():
    text = (b'the quick brown fox jumps over the lazy dog ' * 100)[:PAGE]
    page = zlib.compress(text, 1)
    return {
        'text-l1': page,
        'text-l9': zlib.compress(text, 9),
        'zero': zlib.compress(bytes(PAGE)),
        'short': zlib.compress(text[:100]),
        'long': zlib.compress(text * 2),
        'truncated': page[:-5],
        'trailing': page + b'\0',
        'stored': zlib.compress(os.urandom(PAGE), 0),
    }


# The VFIO device stream (docs/devel/vfio-migration.rst): be64 markers
END, CONFIG, SETUP, DATA, INIT = (0xffffffffef100000 + i for i in range(1, 6))


def be64(*values):
    return b''.join(v.to_bytes(8, 'big') for v in values)


def vfio_seeds():
    """Sections of one device's stream, after a byte that says whether
    switchover-ack is on; the fake device's state starts 'FAKEVFIO'."""
    state = b'FAKEVFIO' + bytes(range(40))
    data = be64(DATA, len(state)) + state
    return {
        'setup': b'\1' + be64(SETUP, END),
        'precopy-ack': b'\1' + be64(SETUP, END) + data + be64(INIT),
        'full': b'\0' + be64(SETUP, END) + data + be64(END)
                + be64(CONFIG) + bytes(10) + be64(END),
        'oversized': b'\0' + be64(DATA, 2 << 20),
        'unknown': b'\0' + be64(0xffffffffef1000ff),
    }


# The sPAPR HTAB stream's parts (include/hw/ppc/spapr_htab.h)
HTAB_ENTRIES = (1 << 12) // 16    # the fuzz target's table


def htab_chunk(index, n_valid, n_invalid, data_entries=None):
    entries = n_valid if data_entries is None else data_entries
    return (index.to_bytes(4, 'big') + n_valid.to_bytes(2, 'big')
            + n_invalid.to_bytes(2, 'big')
            + b''.join(((i << 12) | 1).to_bytes(8, 'big') + bytes(8)
                       for i in range(entries)))


def htab_seeds():
    """Parts of a table of 2^12 bytes: well-formed ones and the hostile
    cases of the unit test (tests/unit/test-spapr-htab.c)."""
    end = htab_chunk(0, 0, 0)
    return {
        'valid': htab_chunk(0, 3, 2) + htab_chunk(100, 1, 0) + end,
        'last-entry': htab_chunk(HTAB_ENTRIES - 1, 1, 0) + end,
        'past-end': htab_chunk(HTAB_ENTRIES - 1, 2, 0) + end,
        'clears-past-end': htab_chunk(HTAB_ENTRIES - 10, 0, 11) + end,
        'wraps-32-bits': htab_chunk(0xffffffff, 1, 0) + end,
        'max-counts': htab_chunk(0xffff0001, 0xffff, 0xffff, 0) + end,
        'truncated-chunk': htab_chunk(0, 4, 0, 2),
        'no-end-marker': htab_chunk(100, 0, 1),
        'cut-header': htab_chunk(0, 1, 0, 0)[:5],
        'bad-shift': (60).to_bytes(4, 'big') + end,
    }


# The vring engine's target (tests/fuzz/vring-walk-fuzz.c): a header,
# then operations of a driver and a device on one queue
V_INDIRECT, V_EVENT_IDX, V_VERSION_1, V_NOTIFY_ON_EMPTY, V_BIG_ENDIAN = (
    1, 2, 4, 8, 16)
NEXT, WRITE, INDIRECT = 1, 2, 4
ONE_BYTE, FOUR_BYTES = 8, 11          # the target's chunks[] entries
STRADDLE = 0x10000                    # regions 0 and 1 meet here


def le(value, size):
    return value.to_bytes(size, 'little')


def vring(log2num, features, ops, chunk=0, layout=0, start=0):
    """LAYOUT: 2 bits each for the table, avail and used rings (0 is
    0x1000, 0x6000, 0x8000); START: the indices at the start."""
    return bytes([log2num, features, chunk, layout]) + le(start, 2) + \
        b''.join(ops)


def desc(i, addr, length, flags=0, nxt=0, table=None):
    body = le(addr, 8) + le(length, 4) + le(flags, 2) + le(nxt, 2)
    if table is None:
        return b'\0' + le(i, 2) + body
    return b'\1' + bytes([table, i]) + body


def avail(*heads):
    return b''.join(b'\2' + le(h, 2) for h in heads)


def avail_idx(v):
    return b'\3' + le(v, 2)


def avail_flags(v):
    return b'\4' + le(v, 2)


def used_event(v):
    return b'\5' + le(v, 2)


def pop(n=16):
    return b'\7' + bytes([n - 1])


def push(n=16, length=0x100):
    return b'\x08' + bytes([n - 1]) + le(length, 4)


def kicks(on):
    return b'\x0b' + bytes([on])


def unpop(n):
    return b'\x0c' + bytes([n - 1])


def chunk(i):
    return b'\x0e' + bytes([i])


PUBLISH, NOTIFY, UNMAP, PASS = b'\x09', b'\x0a', b'\x0d', b'\x0f'
V1 = V_VERSION_1
V1_ALL = V1 | V_INDIRECT | V_EVENT_IDX


def vring_seeds():
    """Well-formed rings (so that coverage starts deep) in every layout
    and byte order, and the unit test's hostile cases."""
    basic = [desc(3, 0xa000, 16, NEXT, 5), desc(5, 0xb000, 32, WRITE),
             avail(3), pop(), push(1, 32), PUBLISH, NOTIFY, pop()]
    indirect = [desc(0, 0x9000, 48, INDIRECT),
                desc(0, 0xa000, 100, NEXT, 2, table=0),
                desc(2, 0xb000, 10, WRITE | NEXT, 1, table=0),
                desc(1, 0xb100, 20, WRITE, table=0), avail(0), PASS]
    chained = [desc(0, 0xa000, 40, NEXT, 1), desc(1, 0xfff8, 48, INDIRECT),
               desc(0, 0xa028, 60, NEXT, 2, table=1),
               desc(2, 0x18000, 10, WRITE | NEXT, 1, table=1),
               desc(1, 0x10c000, 20, WRITE, table=1), avail(0), PASS]
    straddle = [desc(0, 0xff00, 0x200, NEXT, 1),
                desc(1, 0xfff0, 0x20, WRITE), avail(0), PASS]
    many = [desc(i, 0xa000 + 0x100 * i, 0x80, WRITE) for i in range(16)]
    batch = many + [avail(*range(5)), pop(5), push(5), PUBLISH, NOTIFY,
                    avail(*range(5, 16)), PASS, avail(*range(16)), PASS]
    event = many + [avail(0), pop(), push(), PUBLISH, NOTIFY, used_event(3),
                    avail(1, 2, 3), pop(1), push(1), PUBLISH, NOTIFY,
                    pop(2), push(2), PUBLISH, NOTIFY, kicks(1),
                    avail(4), pop(), push(), PUBLISH, NOTIFY]
    kick = many + [kicks(0), avail(0, 1), kicks(1), pop(), push(), PUBLISH,
                   NOTIFY, kicks(0), kicks(1)]
    seeds = {
        'basic': vring(4, V1, basic),
        'basic-byte-split': vring(4, V1, basic, chunk=ONE_BYTE),
        'basic-4-bytes': vring(4, V1, basic, chunk=FOUR_BYTES),
        'legacy-be': vring(4, V_BIG_ENDIAN, basic),
        'legacy-le': vring(4, 0, basic),
        'indirect': vring(4, V1 | V_INDIRECT, indirect),
        'indirect-chained-straddle': vring(4, V1 | V_INDIRECT, chained),
        'indirect-be-split': vring(4, V_INDIRECT | V_BIG_ENDIAN, chained,
                                   chunk=FOUR_BYTES),
        'buffer-straddle': vring(4, V1, straddle),
        # table, avail and used across regions 0 and 1 in turn, misaligned
        'table-straddle': vring(4, V1, basic, layout=0x15),
        'avail-straddle': vring(4, V1, basic, layout=0x08),
        'used-straddle': vring(4, V1 | V_EVENT_IDX, event, layout=0x20),
        'region-2': vring(4, V1, basic, layout=0x0e),
        'batching': vring(4, V1, batch),
        'no-interrupt': vring(4, V1, [avail_flags(1)] + batch),
        'notify-on-empty': vring(4, V_NOTIFY_ON_EMPTY,
                                 [avail_flags(1)] + batch),
        'event-idx': vring(4, V1_ALL, event),
        'event-idx-wrap': vring(4, V1_ALL, event, start=65533),
        'event-idx-be': vring(4, V_EVENT_IDX | V_BIG_ENDIAN, event,
                              start=65533),
        'kicks': vring(4, V1, kick),
        'kicks-event-idx': vring(4, V1_ALL, kick),
        'unpop': vring(4, V1, many + [avail(*range(4)), pop(3), unpop(2),
                                      UNMAP, pop(), push(), PUBLISH]),
        'num-1': vring(0, V1, [desc(0, 0xa000, 8, WRITE), avail(0), PASS,
                               avail(0), PASS]),
        'num-256': vring(8, V1_ALL, [desc(i, 0xc000 + 64 * i, 64, WRITE)
                                     for i in range(64)]
                         + [avail(*range(64)), PASS]),
        # hostile
        'loop': vring(4, V1, [desc(0, 0xa000, 8, NEXT, 1),
                              desc(1, 0xa000, 8, NEXT, 0), avail(0), pop()]),
        'indirect-loop': vring(4, V1 | V_INDIRECT, [
            desc(0, 0x9000, 32, INDIRECT),
            desc(0, 0xa000, 8, NEXT, 1, table=0),
            desc(1, 0xa000, 8, NEXT, 1, table=0), avail(0), pop()]),
        'nested-indirect': vring(4, V1 | V_INDIRECT, [
            desc(0, 0x9000, 16, INDIRECT),
            desc(0, 0x108000, 16, INDIRECT, table=0), avail(0), pop()]),
        'write-before-read': vring(4, V1, [
            desc(0, 0xb000, 8, WRITE | NEXT, 1), desc(1, 0xa000, 8),
            avail(0), pop()]),
        'head-out-of-range': vring(4, V1, [avail(16), pop()]),
        'avail-jump': vring(4, V1, [avail_idx(17), pop()]),
        'in-flight': vring(0, V1, [avail(0), pop(), avail(0), pop()]),
        'too-many-iovecs': vring(4, V1, [desc(0, 0xa000, 2000), avail(0),
                                          chunk(ONE_BYTE), pop()]),
        'table-out-of-ram': vring(4, V1, [desc(8, 0xa000, 8), avail(8),
                                           pop()], layout=0x03),
        'broken-then-more': vring(4, V1, [avail(16), pop(), push(), PUBLISH,
                                           NOTIFY, kicks(1), PASS]),
    }
    return seeds


_built = []


def build_targets(tmp_path):
    """Build every target once a session, into the first test's tmp_path"""
    if not _built:
        _built.extend(subprocess.run(
            [os.path.join(TOP, 'tests', 'fuzz', 'build'),
             str(tmp_path / 'bin')], check=True, capture_output=True,
            text=True).stdout.split())
    return _built


def build_and_run(tmp_path, name, seeds, max_len, runs=RUNS):
    """Build the targets, seed NAME with SEEDS, run it RUNS times."""
    target = next(p for p in build_targets(tmp_path) if p.endswith(name))
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    for seed, data in seeds.items():
        (corpus / seed).write_bytes(data)
    run = subprocess.run([target, '-runs=%d' % runs, '-seed=1',
                          '-max_len=%d' % max_len, str(corpus)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'Done %d runs' % runs in run.stderr, run.stderr[-3000:]


@pytest.mark.skipif(not shutil.which('clang'), reason='clang is not installed')
def test_ram_decompress_fuzz(tmp_path):
    build_and_run(tmp_path, 'ram-decompress-fuzz', seeds(), PAGE + 64)


@pytest.mark.skipif(not shutil.which('clang'), reason='clang is not installed')
def test_vfio_load_fuzz(tmp_path):
    # Each run sets a device up and tears it down: fewer runs, same time
    build_and_run(tmp_path, 'vfio-load-fuzz', vfio_seeds(), 64 * 1024,
                  runs=300000)


@pytest.mark.skipif(not shutil.which('clang'), reason='clang is not installed')
def test_spapr_htab_hostile_parts_under_asan(tmp_path):
    """Each hostile part of the unit test, once, through the ASan build."""
    target = next(p for p in build_targets(tmp_path)
                  if p.endswith('spapr-htab-load-fuzz'))
    files = []
    for seed, data in htab_seeds().items():
        files.append(tmp_path / seed)
        files[-1].write_bytes(data)
    run = subprocess.run([target] + [str(f) for f in files],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count('Executed') == len(files), run.stderr[-3000:]


@pytest.mark.skipif(not shutil.which('clang'), reason='clang is not installed')
def test_spapr_htab_load_fuzz(tmp_path):
    # A QEMUFile a run makes it ~1000 runs/s under ASan
    build_and_run(tmp_path, 'spapr-htab-load-fuzz', htab_seeds(), 64 * 1024,
                  runs=40000)


@pytest.mark.skipif(not shutil.which('clang'), reason='clang is not installed')
def test_vring_walk_fuzz(tmp_path):
    # A session of a driver and a device a run: ~5000 runs/s under ASan
    build_and_run(tmp_path, 'vring-walk-fuzz', vring_seeds(), 4096,
                  runs=VRING_RUNS)


@pytest.mark.skipif(not shutil.which('clang'), reason='clang is not installed')
def test_vring_engine_unit_test_under_asan(tmp_path):
    """The vring engine's unit test (hostile cases included), once,
    built with ASan and UBSan."""
    target = next(p for p in build_targets(tmp_path)
                  if p.endswith('test-vring-engine-asan'))
    run = subprocess.run([target], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    plan = re.search(r'^1\.\.(\d+)$', run.stdout, re.M)
    assert plan and int(plan.group(1)) >= 14, run.stdout
    assert run.stdout.count('\nok ') == int(plan.group(1)), run.stdout
    assert 'not ok' not in run.stdout and '/vring-engine/hostile' in run.stdout
