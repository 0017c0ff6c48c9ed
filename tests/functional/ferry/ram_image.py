"""Guest RAM prepared as a file, for migrations of a known content.

A guest started with file_backed_ram(path) maps PATH privately as its
RAM: the migration reads exactly the file's pages and the guest never
writes them back.  Half the pages of make_image() are text-like (zlib
level 1 shrinks them about 1.7x), half are zero, in a fixed shuffled order.
"""

import os
import random

MiB = 1 << 20
PAGE = 4096


def text_page(rng, words):
    out, n = [], 0
    while n <= PAGE:
        w = rng.choice(words)
        out.append(w)
        n += len(w) + 1
    return ' '.join(out).encode()[:PAGE]


def make_image(path, mem_mib, seed=42):
    """Write (once per size) a RAM image of MEM_MIB MiB to PATH."""
    size = mem_mib * MiB
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    rng = random.Random(seed)
    words = [''.join(rng.choice('etaoinshrdlucmfwypvbgkjqxz')
                     for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    pool = [text_page(rng, words) for _ in range(512)]
    pages = size // PAGE
    text = set(rng.sample(range(pages), pages // 2))
    zero = bytes(PAGE)
    with open(path + '.tmp', 'wb') as f:
        for p in range(pages):
            if p in text:
                # a pooled page made unique, so no two pages are equal
                page = bytearray(rng.choice(pool))
                page[:8] = p.to_bytes(8, 'little')
                f.write(page)
            else:
                f.write(zero)
    os.rename(path + '.tmp', path)
    return path


def make_random_image(path, mem_mib):
    """Write (once per size) a RAM image of MEM_MIB MiB of random bytes to
    PATH: pages no compressor can shrink (encrypted or random guest
    memory), and none of them zero."""
    size = mem_mib * MiB
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    with open(path + '.tmp', 'wb') as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    os.rename(path + '.tmp', path)
    return path


def file_backed_ram(path, mem_mib, share=False):
    """Command-line arguments for a pc guest whose RAM is PATH."""
    return ['-machine', 'pc-i440fx-7.2,memory-backend=mem',
            '-m', '%dM' % mem_mib,
            '-object', 'memory-backend-file,id=mem,size=%dM,mem-path=%s,'
            'share=%s' % (mem_mib, path, 'on' if share else 'off')]


def anonymous_ram(mem_mib):
    """The same machine with ordinary RAM, for a destination."""
    return ['-machine', 'pc-i440fx-7.2,memory-backend=mem',
            '-m', '%dM' % mem_mib,
            '-object', 'memory-backend-ram,id=mem,size=%dM' % mem_mib]
