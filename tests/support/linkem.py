"""A user-space stand-in for `tc qdisc ... netem delay D loss P` between two interfaces.

The kernel the tests run on has no sch_netem, so this relays Ethernet frames between two
interfaces of one namespace with AF_PACKET sockets: every frame is dropped with probability P
and otherwise sent on the other side D seconds after it arrived, in order, in both directions.
PACKET_VNET_HDR keeps each frame's offload header (checksum still to compute, GSO super-frame),
so what comes out is what went in, as with netem on a veth (which also drops whole GSO frames).

Run inside the namespace that holds both interfaces, until terminated; prints "ready" once both
sockets are bound, and counts on exit:

    python -m tests.support.linkem IFACE_A IFACE_B DELAY_SECONDS LOSS_FRACTION [SEED]
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import sys
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
FRAME_MAX = 65536 + 64


@dataclass
class Counts:
    relayed: int = 0
    dropped: int = 0
    failed: int = 0


def open_side(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # not the frames we send ourselves
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((interface, ETH_P_ALL))
    sock.setblocking(False)
    return sock


class Relay:
    def __init__(self, a: socket.socket, b: socket.socket, delay: float, loss: float, rng: random.Random):
        self.sides = (a, b)
        self.delay, self.loss, self.rng = delay, loss, rng
        self.counts = Counts()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        a, b = self.sides
        loop.add_reader(a.fileno(), self._pump, loop, a, b)
        loop.add_reader(b.fileno(), self._pump, loop, b, a)

    def _pump(self, loop: asyncio.AbstractEventLoop, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                frame = source.recv(FRAME_MAX)
            except BlockingIOError:
                return
            if self.rng.random() < self.loss:
                self.counts.dropped += 1
                continue
            loop.call_later(self.delay, self._send, sink, frame)

    def _send(self, sink: socket.socket, frame: bytes) -> None:
        try:
            sink.send(frame)
            self.counts.relayed += 1
        except OSError:  # a full queue or a link taken down: lost, as on a wire
            self.counts.failed += 1


async def main(argv: list[str]) -> None:
    a_name, b_name, delay, loss = argv[0], argv[1], float(argv[2]), float(argv[3])
    rng = random.Random(int(argv[4]) if len(argv) > 4 else None)
    relay = Relay(open_side(a_name), open_side(b_name), delay, loss, rng)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    relay.start(loop)
    print("ready", flush=True)
    await stop.wait()
    c = relay.counts
    print(f"relayed {c.relayed} dropped {c.dropped} failed {c.failed}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
