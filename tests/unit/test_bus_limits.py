"""The bus device's limits and endpoints: IPv6 loopback (issue 19, finding 19)."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from tests.integration.conftest import free_port
from zsvc import protocol
from zsvc.daemon.bus import BusDevice


def test_the_ipv6_loopback_is_bound_and_carries_messages() -> None:
    """``tcp://[::1]:P`` is documented as loopback: it binds (libzmq needs ZMQ_IPV6, or
    says "No such device"), and an IPv4 endpoint bound after it still works."""

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        device = BusDevice(context)
        pub, sub = f"tcp://[::1]:{free_port()}", f"tcp://[::1]:{free_port()}"
        device.bind(pub, sub)
        device.bind(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
        device.start()
        publisher, subscriber = context.socket(zmq.PUB), context.socket(zmq.SUB)
        for sock in (publisher, subscriber):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IPV6, 1)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        publisher.connect(pub)
        subscriber.connect(sub)
        frames = protocol.encode(protocol.make_message("process", "hello"))
        try:
            async with asyncio.timeout(10.0):
                while not await subscriber.poll(20):  # the slow joiner: send until one arrives
                    await publisher.send_multipart(frames)
                assert await subscriber.recv_multipart() == frames
        finally:
            publisher.close()
            subscriber.close()
            await device.close()
            context.term()

    asyncio.run(scenario())
