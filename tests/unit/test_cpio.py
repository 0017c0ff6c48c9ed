"""The newc cpio writer used for test initramfs images (ferry.cpio)."""

import shutil
import subprocess

import pytest

from ferry.cpio import cpio_newc

ENTRIES = [('dir', 'bin', None),
           ('file', 'bin/hello', b'#!/bin/sh\necho hi\n', 0o755),
           ('symlink', 'bin/sh', 'hello'),
           ('file', 'odd', b'x' * 5, 0o644)]


def test_layout_is_4_byte_aligned_and_terminated():
    data = cpio_newc(ENTRIES)
    assert data.startswith(b'070701')
    assert len(data) % 4 == 0
    assert b'TRAILER!!!\0' in data


@pytest.mark.skipif(not shutil.which('cpio'), reason='cpio tool not installed')
def test_gnu_cpio_reads_it(tmp_path):
    listing = subprocess.run(['cpio', '-it', '--quiet'], input=cpio_newc(ENTRIES),
                             capture_output=True, check=True).stdout.decode()
    assert listing.split() == ['bin', 'bin/hello', 'bin/sh', 'odd']
    subprocess.run(['cpio', '-id', '--quiet'], input=cpio_newc(ENTRIES),
                   cwd=tmp_path, check=True)
    assert (tmp_path / 'bin' / 'hello').read_bytes() == b'#!/bin/sh\necho hi\n'
    assert (tmp_path / 'bin' / 'hello').stat().st_mode & 0o777 == 0o755
    assert (tmp_path / 'bin' / 'sh').is_symlink()
    assert (tmp_path / 'odd').read_bytes() == b'xxxxx'


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError):
        cpio_newc([('fifo', 'x', None)])
