"""One error tree, one mapping table: every error survives the trip through a gRPC status."""

import grpc
import pytest
from google.rpc import status_pb2

from flashstock.client import FieldViolation, FlashstockError, InvalidArgument, SkuNotFound, Unavailable
from flashstock.client.errors import STATUS_TABLE, from_status, status_code_of, to_status


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


def _drawn_tree() -> dict[str, str | None]:
    """Each class drawn in the tree of :mod:`flashstock.client.errors`, and the class drawn as its parent."""
    import re

    import flashstock.client.errors as errors

    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in errors.__doc__.splitlines():
        found = re.match(r"^    ([│ ]*)(?:[├└]── )?([A-Z]\w+)\b", line)
        if found is None:
            continue
        depth = len(found[1]) // 4 + (1 if "── " in line else 0)
        del path[depth:]
        parents[found[2]] = path[-1] if path else None
        path.append(found[2])
    return parents


def test_the_drawn_tree_is_the_class_tree():
    # Every error of the node's parts too: the coordination branch, the ledger's, the store's.
    import flashstock.client.errors as errors
    import flashstock.lockmgr as lockmgr
    import flashstock.server.ledger as ledger
    import flashstock.server.store.replies as replies

    classes = {}
    pending = [FlashstockError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("flashstock.") and not cls.__name__.startswith("_"):
            classes[cls.__name__] = cls
        pending += cls.__subclasses__()
    assert {errors.FlashstockError, lockmgr.LeaseLost, ledger.Fenced, replies.UnreadableSku} <= set(classes.values())

    def public_base(cls: type) -> str | None:
        return next((base.__name__ for base in cls.__mro__[1:] if not base.__name__.startswith("_")), None)

    drawn = _drawn_tree()
    assert set(drawn) == set(classes), "every error class is drawn, and only those"
    assert {name: public_base(cls) for name, cls in classes.items()} == {**drawn, "FlashstockError": "Exception"}


def test_the_ledgers_refusals_are_ledger_errors_that_travel_as_unknown():
    from flashstock.server.ledger import Fenced, LedgerError, StaleGeneration

    for cls in (Fenced, StaleGeneration):
        assert issubclass(cls, LedgerError) and issubclass(cls, FlashstockError)
        assert status_code_of(cls("x", shard=1)) is grpc.StatusCode.UNKNOWN
    assert len({LedgerError.reason, Fenced.reason, StaleGeneration.reason, FlashstockError.reason}) == 4
