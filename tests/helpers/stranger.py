"""A caller that knows nothing of flashstock but a node's address.

:class:`Stranger` builds its messages from the node's server reflection, in
a descriptor pool of its own (as grpcurl does, or a Go or Java service would
from the .proto), and calls the methods through plain grpc.aio channels: no
flashstock client library, no generated stubs, no ``retry`` flag unless the
test sets one. What a promise holds for it, it holds for every caller.

::

    stranger = Stranger(["127.0.0.1:50051"])
    reply = await stranger.call("Deduct", sku_id="hot", user_id="u1", qty=1, request_id="order-1")
    assert stranger.outcome(reply) == "OUTCOME_OK"
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

__all__ = ["Stranger"]

_SERVICES = {"StockService", "AdminService"}


class Stranger:
    """Raw gRPC calls to ``addresses`` (round-robin), messages from server reflection.

    ``connections``: channels per address, each with a connection of its own
    (a node's worker processes share its port: each connection lands on one).
    """

    def __init__(self, addresses: Sequence[str], package: str = "flashstock.v1", connections: int = 1) -> None:
        self._reflection = grpc.insecure_channel(addresses[0])
        self._pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self._reflection))
        self._package = package
        self._methods: dict[str, tuple[str, Any, Any]] = {}
        for service in _SERVICES:
            desc = self._pool.FindServiceByName(f"{package}.{service}")
            for method in desc.methods:
                self._methods[method.name] = (
                    f"/{desc.full_name}/{method.name}",
                    GetMessageClass(method.input_type),
                    GetMessageClass(method.output_type),
                )
        self._outcomes = self._pool.FindEnumTypeByName(f"{package}.Outcome")
        own = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(a, options=own) for a in addresses for _ in range(connections)]
        self.nodes = len(addresses)
        self._next = itertools.cycle(range(len(self._channels)))

    def message(self, method: str, **fields: Any) -> Any:
        """The request message of ``method`` with ``fields``."""
        return self._methods[method][1](**fields)

    async def call(
        self,
        method: str,
        *,
        node: int | None = None,
        timeout: float = 10.0,
        metadata: Sequence[tuple[str, str]] | None = None,
        **fields: Any,
    ) -> Any:
        """Call ``method`` (e.g. ``"Deduct"``) on the next connection, or on one to node ``node``, with
        ``metadata`` if given (``authorization: Bearer ...``); raises grpc.aio.AioRpcError."""
        path, request_type, reply_type = self._methods[method]
        index = next(self._next)
        if node is not None:
            per_node = len(self._channels) // self.nodes
            index = node * per_node + index % per_node
        channel = self._channels[index]
        stub = channel.unary_unary(
            path, request_serializer=request_type.SerializeToString, response_deserializer=reply_type.FromString
        )
        return await stub(request_type(**fields), timeout=timeout, metadata=metadata)

    def enum_number(self, enum: str, name: str) -> int:
        """The number of value ``name`` of enum ``enum`` (e.g. ``"Mode"``, ``"MODE_DURABLE"``), from reflection."""
        return self._pool.FindEnumTypeByName(f"{self._package}.{enum}").values_by_name[name].number

    def outcome(self, reply: Any) -> str:
        """The name of a reply's outcome, e.g. ``"OUTCOME_DUPLICATE"``."""
        return self._outcomes.values_by_number[reply.outcome].name

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close()
        self._reflection.close()
