"""Whom the daemon believes on the bus: the trust policy, and the device's two sides."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import zmq
import zmq.asyncio

from tests.integration.conftest import free_port
from zsvc import protocol
from zsvc.daemon import trust
from zsvc.daemon.bus import BusDevice, plan_bind
from zsvc.hostwire import ORDER_KEY


def frames(topic: str, action: str = "a", **content: object) -> list[bytes]:
    return protocol.encode(protocol.make_message(topic, action, content=dict(content)))


def test_plain_tcp_is_the_public_side_and_ipc_or_curve_the_trusted_one() -> None:
    assert plan_bind("ipc:///run/zsvc/bus-pub", curve=False).trusted
    assert plan_bind("tcp://127.0.0.1:5557", curve=True).trusted
    assert not plan_bind("tcp://*:5557", curve=False).trusted
    assert not plan_bind("tcp://127.0.0.1:5557", curve=False).trusted


def test_only_task_events_of_the_daemon_go_to_the_public_side() -> None:
    """Records, answers, samples and orders are private; a task's life events are not."""
    for action in ("started", "exited", "failed", "stopped"):
        assert trust.is_public(protocol.make_message("control", action))
    for topic, action in (
        ("control", "update"),  # context_info: the whole record
        ("state", "reply_context"),
        ("state", "reply_top"),
        ("state", "reply_stop"),
        ("monitor", "sample"),
        ("process", "stop"),  # an order to a thread host
    ):
        assert not trust.is_public(protocol.make_message(topic, action)), (topic, action)


def test_public_messages_on_the_daemons_topics_never_reach_trusted_readers() -> None:
    """However the topic is spelt: every zsvc reader strips it and splits legacy frames."""
    for topic in ("control", "state", "context", "monitor", "controlX"):
        assert not trust.admit_public(frames(topic, "updated"))
    body = json.dumps({"header": {"action": "updated"}}).encode()
    assert not trust.admit_public([b" control\t", body])
    assert not trust.admit_public([b"  control @@@ " + body])


def test_public_orders_to_thread_hosts_are_withheld_other_mail_passes() -> None:
    assert not trust.admit_public(frames("process", "start", **{ORDER_KEY: {"run": "x"}}))
    legacy = protocol.encode(
        protocol.make_message("process", "stop", content={ORDER_KEY: {"run": "x"}})
    )
    assert not trust.admit_public([b" process @@@ " + legacy[1]])
    escaped = b'{"header": {"action": "stop"}, "content": {"zsvc\\u005forder": {"run": "x"}}}'
    assert protocol.decode([b"process", escaped]).content[ORDER_KEY] == {"run": "x"}
    assert not trust.admit_public([b"process", escaped])  # spelt with an escape: still an order
    assert trust.admit_public(frames("process", "hello", text="hi"))
    assert trust.admit_public(frames("process", "hello", text="caf\u00e9 " + ORDER_KEY[:4]))
    assert trust.admit_public(frames("_probe.abc", "probe"))
    assert trust.admit_public([b"anything", b"not json"])  # nobody's reader accepts it
    assert trust.admit_public([b"process", b"not json"])
    assert trust.admit_public([b"a", b"b", b"c"])


async def _receive(sock: zmq.asyncio.Socket, timeout_ms: int) -> list[bytes] | None:
    if await sock.poll(timeout_ms):
        return await sock.recv_multipart()
    return None


def test_the_device_reads_only_the_trusted_side(tmp_path: Path) -> None:
    """A public publisher reaches public subscribers and the tasks' mail, but the daemon
    never observes it; the daemon's private messages never reach the public side."""

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        observed: list[protocol.Message] = []
        device = BusDevice(context, on_message=observed.append)
        ipc_pub, ipc_sub = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/sub"
        tcp_pub, tcp_sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        device.bind(ipc_pub, ipc_sub)
        device.bind(tcp_pub, tcp_sub)
        device.start()
        socks = []

        def sock(kind: int, endpoint: str) -> zmq.asyncio.Socket:
            made = context.socket(kind)
            made.setsockopt(zmq.LINGER, 0)
            if kind == zmq.SUB:
                made.setsockopt(zmq.SUBSCRIBE, b"")
            made.connect(endpoint)
            socks.append(made)
            return made

        trusted_sub, public_sub = sock(zmq.SUB, ipc_sub), sock(zmq.SUB, tcp_sub)
        trusted_pub, public_pub = sock(zmq.PUB, ipc_pub), sock(zmq.PUB, tcp_pub)
        try:
            async with asyncio.timeout(10.0):
                # Joined: a probe from each publisher reaches both subscribers.
                for publisher in (trusted_pub, public_pub):
                    probe = frames("_probe.x", "probe")
                    for subscriber in (trusted_sub, public_sub):
                        while await _receive(subscriber, 20) is None:
                            await publisher.send_multipart(probe)
                        while await _receive(subscriber, 50) is not None:
                            pass  # the probe's other copies
                forged = frames("control", "updated")
                await public_pub.send_multipart(forged)
                await public_pub.send_multipart(frames("process", "hello"))
                assert await _receive(public_sub, 5000) == forged
                assert (await _receive(public_sub, 5000) or [b""])[0] == b"process"
                mail = await _receive(trusted_sub, 5000)
                assert mail is not None and mail[0] == b"process"  # the forgery was withheld
                assert device.withheld == 1
                assert observed == []
                device.publish(protocol.make_message("control", "update"))
                device.publish(protocol.make_message("control", "started"))
                for subscriber, wanted in ((trusted_sub, "update"), (public_sub, "started")):
                    got = await _receive(subscriber, 5000)
                    assert got is not None and protocol.decode(got).action == wanted
                await trusted_pub.send_multipart(frames("control", "updated"))
                assert await _receive(public_sub, 5000) is not None  # a task's report: public
                while not observed:
                    await asyncio.sleep(0.005)  # polls a condition, bounded by the timeout
                assert [m.action for m in observed] == ["updated"]
        finally:
            for made in socks:
                made.close()
            await device.close()
            context.term()

    asyncio.run(scenario())
