"""Ferry's libFuzzer targets (tests/fuzz) build and survive a short run.

Each target is built with clang, ASan and UBSan, seeded with valid and
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


@pytest.mark.skipif(not shutil.which('clang'), reason='clang is not installed')
def test_ram_decompress_fuzz(tmp_path):
    out = subprocess.run([os.path.join(TOP, 'tests', 'fuzz', 'build'),
                          str(tmp_path / 'bin')], check=True,
                         capture_output=True, text=True).stdout.split()
    target = next(p for p in out if p.endswith('ram-decompress-fuzz'))
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)
    run = subprocess.run([target, '-runs=%d' % RUNS, '-seed=1',
                          '-max_len=%d' % (PAGE + 64), str(corpus)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'Done %d runs' % RUNS in run.stderr, run.stderr[-3000:]
