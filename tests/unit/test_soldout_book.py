"""Node memory of sold-out SKUs converges to the newest state, whatever the order of news."""

from hypothesis import given
from hypothesis import strategies as st

from flashstock.server._soldout import SoldOutBook

news = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 50), st.booleans()),
    max_size=40,
    unique_by=lambda n: (n[0], n[1]),
)


@given(news, st.randoms())
def test_book_ends_in_newest_state_in_any_order(items, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    book = SoldOutBook()
    for sku, version, sold_out in shuffled:
        book.learn(sku, version, sold_out)
    for sku in ("a", "b", "c"):
        mine = [n for n in items if n[0] == sku]
        expected = max(mine, key=lambda n: n[1])[2] if mine else False
        assert (sku in book) == expected


def test_messages_parse_sold_out_and_available():
    book = SoldOutBook()
    book.apply_message("S 3 sku with spaces")
    assert "sku with spaces" in book
    book.apply_message("A 2 sku with spaces")  # older: ignored
    assert "sku with spaces" in book
    book.apply_message("A 4 sku with spaces")
    assert "sku with spaces" not in book


def test_forget_all_empties_the_book():
    book = SoldOutBook()
    book.learn("x", 1, True)
    book.forget_all()
    assert "x" not in book and len(book) == 0
    book.learn("x", 1, True)  # news from before is welcome again after a reset
    assert "x" in book
