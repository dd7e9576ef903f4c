"""One error tree, one mapping table: every error survives the trip through a gRPC status."""

import grpc
import pytest
from google.rpc import status_pb2

from flashstock.client import FieldViolation, FlashstockError, InvalidArgument, SkuNotFound, Unavailable
from flashstock.client._errors import STATUS_TABLE, from_status, status_code_of, to_status


def _trip(error):
    status = to_status(error)
    code = status_code_of(error)
    assert status.code == code.value[0]
    return from_status(code, status.message, [("grpc-status-details-bin", status.SerializeToString())])


@pytest.mark.parametrize("cls", list(STATUS_TABLE))
def test_every_error_class_round_trips(cls):
    back = _trip(cls("boom", sku="s1", shard=3))
    assert type(back) is cls
    assert (back.message, back.sku, back.shard) == ("boom", "s1", 3)


def test_fields_travel_as_rich_details():
    back = _trip(InvalidArgument("bad", [FieldViolation("qty", "must be > 0")]))
    assert back.violations == (FieldViolation("qty", "must be > 0"),)
    back = _trip(Unavailable("later", retry_after=0.25))
    assert back.retry_after == pytest.approx(0.25)


def test_a_status_without_details_maps_by_code():
    assert type(from_status(grpc.StatusCode.NOT_FOUND, "x", None)).__name__ == "NotFound"
    assert type(from_status(grpc.StatusCode.UNAVAILABLE, "x", ())) is Unavailable


def test_unknown_codes_map_to_the_root():
    error = from_status(grpc.StatusCode.DATA_LOSS, "x", None)
    assert type(error) is FlashstockError


def test_a_foreign_error_info_is_not_trusted():
    from google.rpc import error_details_pb2

    status = status_pb2.Status(code=5, message="x")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="SKU_NOT_FOUND", domain="elsewhere"))
    error = from_status(grpc.StatusCode.NOT_FOUND, "x", [("grpc-status-details-bin", status.SerializeToString())])
    assert type(error) is not SkuNotFound


def test_subclasses_find_their_nearest_code():
    class Special(SkuNotFound):
        pass

    assert status_code_of(Special("x")) is grpc.StatusCode.NOT_FOUND
