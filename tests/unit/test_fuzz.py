"""Ferry's libFuzzer targets (tests/fuzz) build and survive a short run.

Each target (the page decoder of migration compression, the VFIO device
stream's loader) is built with clang, ASan and UBSan, seeded with valid and
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


def build_and_run(tmp_path, name, seeds, max_len, runs=RUNS):
    """Build the targets, seed NAME with SEEDS, run it RUNS times."""
    out = subprocess.run([os.path.join(TOP, 'tests', 'fuzz', 'build'),
                          str(tmp_path / 'bin')], check=True,
                         capture_output=True, text=True).stdout.split()
    target = next(p for p in out if p.endswith(name))
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
