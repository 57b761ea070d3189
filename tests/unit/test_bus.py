"""The bus device's bind policy and its count of subscriptions."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
import zmq
import zmq.asyncio

from zsvc import protocol
from zsvc.daemon.bus import BindError, BindPlan, BusDevice, plan_bind


def loopback(endpoint: str) -> str:
    return plan_bind(endpoint, curve=False).endpoint


def test_without_keys_the_bus_binds_only_on_loopback() -> None:
    """Wildcards bind 127.0.0.1; loopback stays; any other TCP address is refused."""
    assert loopback("tcp://*:5557") == "tcp://127.0.0.1:5557"
    assert loopback("tcp://0.0.0.0:5557") == "tcp://127.0.0.1:5557"
    assert loopback("tcp://[::]:5557") == "tcp://127.0.0.1:5557"
    assert loopback("tcp://127.0.0.1:5557") == "tcp://127.0.0.1:5557"
    assert loopback("tcp://localhost:5557") == "tcp://localhost:5557"
    assert loopback("ipc:///run/zsvc/bus-pub") == "ipc:///run/zsvc/bus-pub"
    for public in ("tcp://10.0.0.1:5557", "tcp://example.org:5557", "tcp://[2001:db8::1]:1"):
        with pytest.raises(BindError, match=r"loopback \(127.0.0.1\) only; create keys"):
            loopback(public)


def test_with_keys_every_tcp_endpoint_is_bound_as_written_under_curve() -> None:
    for endpoint in ("tcp://*:5557", "tcp://10.0.0.1:5557", "tcp://127.0.0.1:5557"):
        assert plan_bind(endpoint, curve=True) == BindPlan(endpoint, curve=True)
    ipc = "ipc:///run/zsvc/bus-pub"
    assert plan_bind(ipc, curve=True, open_commands=True) == BindPlan(ipc, curve=False)


def test_a_bus_that_carries_commands_binds_no_tcp_without_keys() -> None:
    """Every local user reaches loopback: commands on it need authenticated clients."""
    with pytest.raises(BindError, match="context_commands is on"):
        plan_bind("tcp://127.0.0.1:5557", curve=False, open_commands=True)
    assert plan_bind("tcp://127.0.0.1:5557", curve=True, open_commands=True).curve


def test_subscriptions_are_counted_and_forgotten_when_nobody_wants_them(tmp_path) -> None:
    """Every task host subscribes to a handshake topic of its own and drops it again:
    the device must count live subscriptions only, not remember every topic ever seen."""

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        device = BusDevice(context, on_message=lambda message: None)
        pub, sub = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/sub"
        device.bind(pub, sub)
        device.start()
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.connect(sub)

        async def until(condition) -> None:
            async with asyncio.timeout(5.0):
                while not condition():
                    await asyncio.sleep(0.005)  # polls a condition, bounded by the timeout

        try:
            subscriber.setsockopt(zmq.SUBSCRIBE, b"control")
            await until(lambda: device.subscribers(b"control.x") == 1)
            for i in range(50):
                topic = f"probe-{i}".encode()
                subscriber.setsockopt(zmq.SUBSCRIBE, topic)
                subscriber.setsockopt(zmq.UNSUBSCRIBE, topic)
            subscriber.setsockopt(zmq.SUBSCRIBE, b"last")
            await until(lambda: device.subscribers(b"last") == 1)
            assert set(device.subscriptions) == {b"control", b"last"}
            subscriber.setsockopt(zmq.UNSUBSCRIBE, b"control")
            await until(lambda: b"control" not in device.subscriptions)
            assert device.subscribers(b"control") == 0
        finally:
            subscriber.close()
            await device.close()
            context.term()

    asyncio.run(scenario())


def test_messages_are_observed_only_once_someone_handles_them(tmp_path) -> None:
    """The daemon starts the bus before its manager exists and sets the handler once it
    does: until then messages are forwarded to subscribers but not observed."""

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        device = BusDevice(context)
        pub, sub = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/sub"
        device.bind(pub, sub)
        device.start()
        subscriber = context.socket(zmq.SUB)
        publisher = context.socket(zmq.PUB)
        for sock in (subscriber, publisher):
            sock.setsockopt(zmq.LINGER, 0)
        subscriber.connect(sub)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"control")
        publisher.connect(pub)
        observed: list[protocol.Message] = []
        try:
            async with asyncio.timeout(5.0):
                while device.subscribers(b"control") == 0:
                    await asyncio.sleep(0.005)  # polls a condition, bounded by the timeout
                for action in ("before", "after"):
                    message = protocol.make_message(protocol.Topic.CONTROL, action)
                    while not await subscriber.poll(50):  # the publisher's first may be lost
                        await publisher.send_multipart(protocol.encode(message))
                    while await subscriber.poll(200):  # every copy sent, forwarded
                        received = protocol.decode(await subscriber.recv_multipart())
                        assert received.action == action
                    device.on_message = observed.append
                while not observed:
                    await asyncio.sleep(0.005)
        finally:
            subscriber.close()
            publisher.close()
            await device.close()
            context.term()
        assert {message.action for message in observed} == {"after"}

    asyncio.run(scenario())


def test_a_users_pair_belongs_to_that_user_and_outlives_every_release(tmp_path) -> None:
    """The pair of one uid's tasks (``bind_for_user``): its files are that uid's, 0600,
    and a release of the contexts' pairs, which unbinds all else, leaves it bound."""
    uid = os.getuid()

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        device = BusDevice(context)
        pair = f"ipc://{tmp_path}/pub.{uid}", f"ipc://{tmp_path}/sub.{uid}"
        other = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/sub"
        try:
            device.bind_for_user(uid, *pair)
            device.bind_for_user(uid, *pair)  # once per uid: the second is a no-op
            device.bind(*other)
            for side in ("pub", "sub"):
                info = os.stat(tmp_path / f"{side}.{uid}")
                assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o600)
            device.release([])
            assert (device.pub_endpoints, device.sub_endpoints) == ({pair[0]}, {pair[1]})
            assert not (tmp_path / "pub").exists()
        finally:
            await device.close()
            context.term()

    asyncio.run(scenario())


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a directory to another uid (chown)")
def test_a_members_context_binds_only_what_the_member_could(tmp_path) -> None:
    """The daemon binds as root: a non-root owner's context gets no port below 1024 and
    no socket file outside a directory that user owns."""
    from zsvc.daemon.bindplan import owner_refusal

    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    os.chown(mine, 4242, 4242)
    assert owner_refusal("tcp://127.0.0.1:1024", 4242) is None
    assert owner_refusal("tcp://127.0.0.1:80", 4242) == (
        "tcp://127.0.0.1:80: ports below 1024 are root's to bind"
    )
    assert owner_refusal(f"ipc://{mine}/bus", 4242) is None
    assert owner_refusal("ipc://@abstract", 4242) is None
    assert "is not yours" in (owner_refusal(f"ipc://{theirs}/bus", 4242) or "")
    assert "is not yours" in (owner_refusal("ipc:///etc/zsvc-x", 4242) or "")
    assert "cannot be used" in (owner_refusal(f"ipc://{tmp_path}/none/bus", 4242) or "")
