"""A user-space stand-in for `tc qdisc ... netem delay D loss P` between two interfaces.

The kernel the tests run on has no sch_netem, so this relays Ethernet frames between two
interfaces of one namespace with AF_PACKET sockets: every frame is dropped with probability P
and otherwise sent on the other side D seconds after it arrived, in order, in both directions.
PACKET_VNET_HDR keeps each frame's offload header (checksum still to compute, GSO super-frame),
so what comes out is what went in, as with netem on a veth (which also drops whole GSO frames).

With `--block A,B` it also drops every IPv4 frame between addresses A and B (and nothing else):
a partition between two hosts that both still reach everyone else, which the bridge alone cannot
make and this kernel has no tc filters for.

Run inside the namespace that holds both interfaces, until terminated; prints "ready" once both
sockets are bound, and counts on exit:

    python -m tests.support.linkem IFACE_A IFACE_B --delay S --loss P [--seed N] [--block A,B]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
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
VNET_HDR = 10  # struct virtio_net_hdr before every frame
ETH_IPV4 = b"\x08\x00"


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
    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        delay: float,
        loss: float,
        rng: random.Random,
        block: frozenset[bytes] = frozenset(),
    ):
        self.sides = (a, b)
        self.delay, self.loss, self.rng = delay, loss, rng
        self.block = block
        self.counts = Counts()

    def blocked(self, frame: bytes) -> bool:
        """An IPv4 frame between the two blocked addresses (either way)."""
        if not self.block or frame[VNET_HDR + 12 : VNET_HDR + 14] != ETH_IPV4:
            return False
        ip = VNET_HDR + 14
        return {frame[ip + 12 : ip + 16], frame[ip + 16 : ip + 20]} == self.block

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
            if self.blocked(frame) or self.rng.random() < self.loss:
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
    parser = argparse.ArgumentParser(prog="linkem")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--block", default="", help="A,B: drop IPv4 between these two addresses")
    args = parser.parse_args(argv)
    block = frozenset(ipaddress.IPv4Address(a).packed for a in args.block.split(",") if a)
    rng = random.Random(args.seed)
    relay = Relay(open_side(args.a), open_side(args.b), args.delay, args.loss, rng, block)
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
