"""Ferry's libFuzzer targets (tests/fuzz) build and survive a short run.

Each target (the page decoder of migration compression, the VFIO device
stream's loader, the sPAPR HTAB stream's loader) is built with clang, ASan and UBSan, seeded with valid and
nearly valid inputs, and run for a fixed number of executions: any crash,
sanitizer report or failed assertion fails the test.  Longer campaigns
are run by hand (tests/fuzz/build prints how).
"""

import os
import shutil
import subprocess
import zlib

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
PAGE = 4096
RUNS = 2000000


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


def build_targets(tmp_path):
    out = subprocess.run([os.path.join(TOP, 'tests', 'fuzz', 'build'),
                          str(tmp_path / 'bin')], check=True,
                         capture_output=True, text=True).stdout.split()
    return out


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
