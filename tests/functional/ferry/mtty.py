"""The kernel's mtty sample device as a QEMU with -accel qtest sees it.

mtty (samples/vfio-mdev/mtty.c, built into the x86_64-vfio guest) is a
PCI serial card: one 8-byte I/O BAR per port (two for an mtty-2 mdev),
each a 16550-like UART whose transmit holding register feeds a 16-byte
loop-back FIFO that the receive buffer register pops.  Under -accel
qtest there is no firmware, so the test programs the BARs itself through
the PCI configuration mechanism #1 (0xcf8/0xcfc) and then reads and
writes the UART registers with qtest's inb/outb, each access reaching
mtty as a read()/write() on the VFIO device fd.

What mtty's registers do (and what a test can read back):
  LCR  written and read as is; a write with DLAB set also zeroes the
       divisor, so the divisor is readable only while DLAB stays set;
  DLL/DLM (offsets 0/1 with DLAB) OR their byte into the divisor;
  IER  reads back its low four bits (the test enables only RLSI, which
       raises no interrupt unless the FIFO overruns);
  MCR, SCR  read back as written;
  FCR  enables and clears the FIFO (not readable: offset 2 reads IIR);
  LSR  DR while the FIFO holds bytes, THRE|TEMT when it is empty;
  RBR  pops the FIFO.
All of it (registers, FIFO, DLAB, divisor) is the "ports" part of the
device's migration data, after a 24-byte header (magic, version, port
count, flags) that mtty also offers as its pre-copy data.  The state
lives in the kernel's mdev, not in the QEMU that opens it: it outlives
that QEMU, and a fresh mdev starts with every register 0.
"""

import struct

PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA = 0xcf8, 0xcfc
PCI_VENDOR_ID, PCI_COMMAND, PCI_BASE_ADDRESS_0 = 0x00, 0x04, 0x10
PCI_COMMAND_IO = 0x1
# vendor 0x4348, device 0x3253 (mtty_create_config_space())
MTTY_ID = 0x32534348
# Where the test puts the ports' I/O BARs (free on a pc machine); a
# second mtty in the same QEMU gets its own (port_bases()).
PORT_BASES = (0xc000, 0xc100)

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7
LCR_DLAB = 0x80
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
FCR_ENABLE_CLEAR = 0x07     # enable the FIFO, clear both directions
IER_RLSI = 0x04
FIFO_SIZE = 16

# struct mtty_data, little-endian: a header (magic, major and minor
# version, port count, flags), then 36 bytes of struct serial_port a port.
MAGIC = struct.pack('<Q', 0x7e9d09898c3e2c4e)
HEADER_SIZE = 24
DATA_SIZE = HEADER_SIZE + 36 * len(PORT_BASES)


def port_bases(index):
    """Where the test puts the ports' BARs of the INDEXth mtty of a QEMU
    (0 for the first: PORT_BASES)."""
    return tuple(base + 0x200 * index for base in PORT_BASES)


class Mtty:
    """An mtty mdev behind a QEMUQtestMachine's vfio-pci device at PCI
    slot SLOT of bus 0, its ports' BARs to be placed at BASES."""

    def __init__(self, vm, slot, bases=PORT_BASES):
        self.vm, self.slot, self.bases = vm, slot, bases

    def _qtest(self, cmd):
        reply = self.vm.qtest(cmd).strip()
        if not reply.startswith('OK'):
            raise RuntimeError('qtest %r: %r' % (cmd, reply))
        return int(reply.split()[1], 16) if ' ' in reply else None

    def outb(self, port, value):
        self._qtest('outb 0x%x 0x%x' % (port, value))

    def inb(self, port):
        return self._qtest('inb 0x%x' % port)

    def _select(self, reg):
        self._qtest('outl 0x%x 0x%x' % (PCI_CONFIG_ADDRESS, 0x80000000
                                        | self.slot << 11 | (reg & 0xfc)))

    def config_read(self, reg):
        """32 bits of configuration space at REG (aligned)."""
        self._select(reg)
        return self._qtest('inl 0x%x' % PCI_CONFIG_DATA)

    def config_write(self, reg, value):
        self._select(reg)
        self._qtest('outl 0x%x 0x%x' % (PCI_CONFIG_DATA, value))

    def config(self):
        """What a test checks of the configuration space: the ID, the
        command register, the BARs of both ports."""
        return {'id': self.config_read(PCI_VENDOR_ID),
                'command': self.config_read(PCI_COMMAND) & 0xffff,
                'bars': [self.config_read(PCI_BASE_ADDRESS_0 + 4 * i)
                         for i in range(len(self.bases))]}

    def map_ports(self):
        """Place the ports' BARs at their bases and enable I/O decoding,
        as firmware would."""
        for i, base in enumerate(self.bases):
            self.config_write(PCI_BASE_ADDRESS_0 + 4 * i, base)
        command = self.config_read(PCI_COMMAND) & 0xffff
        self.config_write(PCI_COMMAND, command | PCI_COMMAND_IO)

    def write_port(self, base, state):
        """Put STATE (uart_state()) into the port at BASE: registers,
        the bytes queued in the FIFO, and last the divisor, leaving DLAB
        set so that the divisor can be read back."""
        self.outb(base + FCR, FCR_ENABLE_CLEAR)
        self.outb(base + LCR, state['lcr'])
        for reg, offset in (('ier', IER), ('mcr', MCR), ('scr', SCR)):
            self.outb(base + offset, state[reg])
        for byte in bytes.fromhex(state['fifo']):
            self.outb(base + THR, byte)
        self.outb(base + LCR, state['lcr'] | LCR_DLAB)   # zeroes the divisor
        self.outb(base + DLL, state['divisor'] & 0xff)
        self.outb(base + DLM, state['divisor'] >> 8)

    def peek_port(self, base):
        """What the port at BASE shows without changing anything (DLAB
        set by write_port()): LCR, the divisor, MCR, SCR, LSR."""
        return {'lcr': self.inb(base + LCR),
                'divisor': self.inb(base + DLL) | self.inb(base + DLM) << 8,
                'mcr': self.inb(base + MCR), 'scr': self.inb(base + SCR),
                'lsr': self.inb(base + LSR)}

    def read_port(self, base):
        """The whole state of the port at BASE as uart_state() describes
        it, read back: the divisor while DLAB is still set, then (DLAB
        cleared) IER, and the FIFO popped to empty.  Leaves the FIFO
        empty and DLAB clear."""
        state = self.peek_port(base)
        state['dlab'] = bool(state['lcr'] & LCR_DLAB)
        state['lcr'] &= ~LCR_DLAB
        self.outb(base + LCR, state['lcr'])
        state['ier'] = self.inb(base + IER)
        fifo = bytearray()
        while self.inb(base + LSR) & LSR_DR and len(fifo) <= FIFO_SIZE:
            fifo.append(self.inb(base + RBR))
        state['fifo'] = fifo.hex()
        state['lsr_empty'] = self.inb(base + LSR)
        return state

    def write_state(self, states):
        for base, state in zip(self.bases, states):
            self.write_port(base, state)

    def read_state(self):
        return [self.read_port(base) for base in self.bases]


def uart_state(seed, port):
    """A UART state for PORT that no other SEED shares: the register
    values and the FIFO's bytes (hex), with the divisor last written."""
    n = (seed * 2 + port) & 0xff
    fifo = bytes([0x40 + n % 32, 0xa5, n, 0x5a ^ n, 0xc3]) + b'F' * (port + 2)
    return {'lcr': 0x03 | (n & 0x3c), 'ier': IER_RLSI, 'mcr': n & 0x1f,
            'scr': 0x80 | n, 'divisor': (n + 1) % 256 << 8 | 0x11,
            'fifo': fifo.hex()}


def device_state(seed):
    """uart_state() of SEED for each port, for write_state()."""
    return [uart_state(seed, port) for port in range(len(PORT_BASES))]


def expected_read(seed):
    """What read_state() must return for the device that write_state()
    set to device_state(SEED): the same values, DLAB still set, every
    byte still queued, and the FIFO empty (THRE|TEMT, no DR) once
    popped."""
    return [dict(state, dlab=True, lsr=LSR_DR, lsr_empty=LSR_THRE | LSR_TEMT)
            for state in device_state(seed)]


def mismatches(want, got):
    """For each port, {key: (want, got)} where the state GOT read back
    differs from WANT: [{}, {}] when the device holds what it should."""
    return [{k: (v, g.get(k)) for k, v in w.items() if g.get(k) != v}
            for w, g in zip(want, got)]
