"""Every node answers gRPC health checks and server reflection."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICES = ("flashstock.v1.StockService", "flashstock.v1.AdminService")


@pytest.fixture
def channel(node):
    with grpc.insecure_channel(node.address) as ch:
        yield ch


@pytest.mark.parametrize("service", ["", *SERVICES])
def test_health_check_is_serving(channel, service):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)

    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def _reflect(channel, request):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    return reply


def test_reflection_lists_both_services_and_health(channel):
    reply = _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {s.name for s in reply.list_services_response.service}
    assert {*SERVICES, "grpc.health.v1.Health"} <= names


def test_reflection_describes_the_stock_service(channel):
    reply = _reflect(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICES[0]))

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b) for b in reply.file_descriptor_response.file_descriptor_proto
    ]
    methods = {m.name for f in files for s in f.service if s.name == "StockService" for m in s.method}
    assert methods == {"Deduct", "Hold", "Confirm", "Release", "GetStock", "BatchDeduct"}
