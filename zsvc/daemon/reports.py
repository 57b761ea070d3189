"""What the daemon says on the bus about its transactions (the seed's messages).

Three kinds of message, each in the seed's shape (``docs/bus.md``):

- a task event: ``control`` with the task's ``last_action`` (started, failed,
  stopped, exited), the run's pid and how it ended;
- the transaction's whole record (``context_info``), coalesced: at most one
  every :data:`CONTEXT_INFO_INTERVAL` seconds per transaction, and not even
  encoded when nobody subscribes;
- the answer to a ``state``/``request`` query.

The manager decides *when* to report (always after the change is committed);
this module decides *what* goes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from zsvc import protocol
from zsvc.daemon.model import TaskRecord, TransactionRecord
from zsvc.runners.base import ExitInfo
from zsvc.states import LastAction, Result

CONTEXT_INFO_INTERVAL = 0.1
"""Seconds between two ``context_info`` publications of one transaction, at least."""


class Reporter:
    """Publishes task events and transaction records for the daemon."""

    def __init__(
        self,
        publish: Callable[[protocol.Message], None],
        transactions: Mapping[str, TransactionRecord],
        listened: Callable[[bytes], int] | None = None,
    ):
        self.publish = publish
        self.transactions = transactions
        self.listened = listened or (lambda topic: 1)
        """How many bus subscriptions would receive a topic (the device counts them)."""
        self._pending: set[str] = set()
        self._sent: dict[str, float] = {}
        """When each transaction's record was last published (loop time)."""

    def task_event(
        self,
        task: TaskRecord,
        action: LastAction,
        info: ExitInfo | None = None,
        pid: int | None = None,
    ) -> None:
        """The seed's control message for a task event (``pid``: the run it is about)."""
        status: dict[str, Any] = {"state": str(task.state), "sub_state": str(task.sub_state)}
        if info is not None:
            status["reason"] = info.describe()
        self.publish(
            protocol.control_message(
                action,
                transaction=task.transaction,
                service_id=task.id,
                service_name=task.spec.service_name,
                result="success" if task.result is Result.SUCCESS else "failure",
                device_action=task.spec.device_action,
                pid=pid or task.pid,
                status=status,
            )
        )
        self.record_changed(task.transaction)

    def record_changed(self, transaction: str) -> None:
        """Publish the transaction's record soon: at most every CONTEXT_INFO_INTERVAL seconds.

        The record is the whole transaction, so a burst of changes (a crash loop
        of a hundred tasks) would otherwise encode it at every loop turn; the
        latest state still goes out, at most CONTEXT_INFO_INTERVAL late.
        """
        if transaction in self._pending:
            return
        self._pending.add(transaction)
        loop = asyncio.get_running_loop()
        due = self._sent.get(transaction, -CONTEXT_INFO_INTERVAL) + CONTEXT_INFO_INTERVAL
        loop.call_later(max(0.0, due - loop.time()), self._publish_record, transaction)

    def forget(self, transaction: str) -> None:
        self._sent.pop(transaction, None)

    def _publish_record(self, transaction: str) -> None:
        self._pending.discard(transaction)
        self._sent[transaction] = asyncio.get_running_loop().time()
        record = self.transactions.get(transaction)
        if record is None or not self.listened(protocol.Topic.CONTROL.encode()):
            return  # the whole record, encoded for nobody: skip it (a crash loop costs less)
        self.publish(
            protocol.make_message(
                protocol.Topic.CONTROL,
                "update",
                transaction=transaction,
                service_id=record.context.context_id,
                service_name="context",
                content={
                    "status": {
                        "device_action": "context_info",
                        "result": "success",
                        "data": record.view(),
                    }
                },
            )
        )

    def reply_state(self, request: protocol.Message) -> None:
        """Answer the seed's ``state``/``request`` with the transaction's record."""
        record = self.transactions.get(request.transaction)
        content: dict[str, Any]
        if record is None:
            content = {"error": f"unknown transaction {request.transaction!r}"}
        else:
            content = record.view()
        header = dict(request.header, action="reply_context")
        self.publish(protocol.Message(protocol.Topic.STATE, header, content))
