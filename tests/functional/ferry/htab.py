"""A pseries machine's hash page table as Ferry's debug command dumps it.

QMP x-spapr-htab-dump {"filename": F} writes F as: 8 bytes b"FERRYHPT",
be32 htab_shift (0 when the guest has no HPT, i.e. uses radix), then one
record per valid HPTE, in index order: be32 index + the entry's 16
big-endian bytes, with the hypervisor's dirty bit (0x40 of the first
doubleword) cleared.  An HPTE is valid when bit 0x1 of its first
doubleword is set.
"""

import os
import re
import struct

MAGIC = b'FERRYHPT'
HPTE_SIZE = 16
RECORD = struct.Struct('>I16s')
V_VALID = 0x1
V_HV_DIRTY = 0x40


class HtabDump:
    """SHIFT (log2 of the table's bytes, 0 without an HPT) and ENTRIES,
    a dict of every valid HPTE's index to its 16 bytes."""

    def __init__(self, shift, entries):
        self.shift, self.entries = shift, entries

    def __repr__(self):
        return '<HtabDump shift %d, %d valid entries>' % (self.shift,
                                                          len(self.entries))


def parse_dump(data):
    """An HtabDump of DATA, the bytes of a dump; ValueError naming the
    first thing in it that breaks the format."""
    if len(data) < 12 or data[:8] != MAGIC:
        raise ValueError('not an HTAB dump: starts %r' % data[:12])
    shift = struct.unpack_from('>I', data, 8)[0]
    if shift and not 18 <= shift <= 46:
        raise ValueError('htab_shift %d out of range' % shift)
    body = data[12:]
    if len(body) % RECORD.size:
        raise ValueError('%d bytes of records, not a multiple of %d'
                         % (len(body), RECORD.size))
    if body and not shift:
        raise ValueError('records in the dump of a machine without an HPT')
    nentries = (1 << shift) // HPTE_SIZE if shift else 0
    entries, last = {}, -1
    for index, hpte in RECORD.iter_unpack(body):
        v = struct.unpack_from('>Q', hpte)[0]
        if index <= last:
            raise ValueError('index %d after %d: not in index order'
                             % (index, last))
        if index >= nentries:
            raise ValueError('index %d beyond the table of %d entries'
                             % (index, nentries))
        if not v & V_VALID:
            raise ValueError('entry %d is not valid: %s' % (index, hpte.hex()))
        if v & V_HV_DIRTY:
            raise ValueError('entry %d has the dirty bit set: %s'
                             % (index, hpte.hex()))
        entries[index] = hpte
        last = index
    return HtabDump(shift, entries)


def dump(vm):
    """VM's hash page table, from x-spapr-htab-dump (VM best stopped)."""
    path = os.path.join(vm.tmpdir, 'htab-%d.dump' % dump.count)
    dump.count += 1
    vm.command('x-spapr-htab-dump', filename=path)
    with open(path, 'rb') as f:
        data = f.read()
    os.unlink(path)
    return parse_dump(data)


dump.count = 0


def describe_hpte(hpte):
    """'v=... r=...' of an HPTE's 16 bytes, or '-' for no entry."""
    if hpte is None:
        return '-'
    v, r = struct.unpack('>QQ', hpte)
    return 'v=%016x r=%016x' % (v, r)


def compare(src, dst, limit=8):
    """None when the HtabDumps SRC and DST hold the same table (the same
    shift, every valid entry equal, no extra valid entry), else a text
    naming the shifts or the first LIMIT differing indexes with both
    sides' entries and the number of differences."""
    if src.shift != dst.shift:
        return ('htab_shift %d on the source, %d on the destination '
                '(%d and %d valid entries)' % (src.shift, dst.shift,
                                               len(src.entries),
                                               len(dst.entries)))
    differ = sorted(i for i in set(src.entries) | set(dst.entries)
                    if src.entries.get(i) != dst.entries.get(i))
    if not differ:
        return None
    lines = ['%d of %d/%d valid entries differ (source / destination):'
             % (len(differ), len(src.entries), len(dst.entries))]
    for i in differ[:limit]:
        lines.append('  %#x: %s / %s' % (i, describe_hpte(src.entries.get(i)),
                                          describe_hpte(dst.entries.get(i))))
    if len(differ) > limit:
        lines.append('  ...')
    return '\n'.join(lines)


# The guest side: /test.sh of a hash guest that keeps its page table busy.
HPT_ORDER = '/sys/kernel/debug/powerpc/hpt_order'
RESIZE_ORDERS = (22, 23)    # log2 bytes; 1 GiB boots with 23


def workload_script():
    """A /test.sh (data_check_script()'s ticks) whose guest keeps
    creating, changing and removing mappings, and so HPTEs, in the
    background: short-lived processes (fork, exec, exit), dd with an
    8 MiB buffer (mmap, fault in, munmap), pipelines, and subshells of a
    shell with a large heap (fork write-protects it, the copies fault in
    again).  It prints "CHURN <n>" every 4 rounds.  Another process
    rewrites a 16 MiB file in tmpfs without pause, so that guest RAM is
    dirtied faster than a slow link carries it: a migration over such a
    link iterates until the test opens it (RAM a guest dirties in
    bursts lets it converge in a quiet moment).

    The guest reads commands from its control console (/dev/hvc1, see
    pseries_guest(control=True)), printing "CONTROL <command>" for each:
    "resize on" starts a loop that makes
    the kernel resize its HPT between the orders RESIZE_ORDERS (debugfs
    hpt_order, which needs the machine's resize-hpt), printing "RESIZES
    <done> failed <failed>" after each pair; "resize off" ends it with
    "RESIZE-OFF <done> failed <failed>".  No loop sleeps (see
    data_check_script())."""
    # Imported here: the dump parser above needs no QEMU (tests/unit).
    from ferry.linux import data_check_script
    setup = r'''mount -t debugfs debugfs /sys/kernel/debug
churn() {
    pad=$(seq 1 20000)
    n=0
    while :; do
        for j in 1 2 3 4 5 6 7 8; do /bin/true; done
        dd if=/dev/zero of=/dev/null bs=8M count=2 2>/dev/null
        dd if=/dev/zero bs=1M count=4 2>/dev/null | md5sum >/dev/null
        s=$(seq 1 300 | sort -rn | head -n 1)
        for j in 1 2 3 4; do (pad=$j); done
        n=$((n + 1))
        [ $((n % 4)) -eq 0 ] && echo "CHURN $n"
    done
}
writer() {
    while :; do
        dd if=/dev/zero of=/tmp/scratch bs=1M count=16 2>/dev/null
    done
}
resize_loop() {
    n=0
    failed=0
    while [ -e /tmp/resize ]; do
        for order in ORDERS; do
            if echo $order > HPT_ORDER; then
                n=$((n + 1))
            else
                failed=$((failed + 1))
            fi
        done
        echo "RESIZES $n failed $failed"
    done
    echo "RESIZE-OFF $n failed $failed"
}
control() {
    stty -echo
    while read cmd; do
        echo "CONTROL $cmd"
        case "$cmd" in
        'resize on') touch /tmp/resize; resize_loop & ;;
        'resize off') rm -f /tmp/resize ;;
        esac
    done
}
churn &
writer &
[ -e /dev/hvc1 ] && control < /dev/hvc1 &
'''
    setup = setup.replace('ORDERS', ' '.join(map(str, RESIZE_ORDERS)))
    return data_check_script(setup=setup.replace('HPT_ORDER', HPT_ORDER))


RESIZES = re.compile(r'RESIZES (\d+) failed (\d+)')
CHURN = re.compile(r'CHURN (\d+)')


def resizes(guest):
    """(done, failed) of the last RESIZES line GUEST printed, or (0, 0)."""
    found = RESIZES.findall(guest.serial())
    return tuple(map(int, found[-1])) if found else (0, 0)


def churn_rounds(guest):
    """The last CHURN count GUEST printed, or 0."""
    found = CHURN.findall(guest.serial())
    return int(found[-1]) if found else 0
