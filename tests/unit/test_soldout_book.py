"""Node memory of sold-out SKUs converges to the newest state, whatever the order of news."""

from hypothesis import given
from hypothesis import strategies as st

from flashstock.server.store.soldout import SoldOutBook

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


def test_a_sold_out_sku_is_refused_only_once_its_takers_are_known():
    asked = []
    book = SoldOutBook(on_sell_out=lambda sku, version: asked.append((sku, version)))
    book.learn("x", 5, True)
    assert asked == [("x", 5)]
    assert "x" in book and not book.refuses("x", "new")  # to Redis until the takers are in
    assert book.install_takers("x", 5, frozenset({"took-1", "took-2"}))
    assert book.refuses("x", "new")
    assert not book.refuses("x", "took-1")  # a resend of a taker gets its first answer from Redis
    assert book.takers_held() == 2


def test_takers_of_an_older_sell_out_are_not_taken():
    book = SoldOutBook()
    book.learn("x", 5, True)
    book.learn("x", 6, False)  # restocked
    assert not book.install_takers("x", 5, frozenset({"a"}))
    book.learn("x", 7, True)  # sold out again: the takers of version 5 are stale
    assert not book.install_takers("x", 5, frozenset({"a"}))
    assert not book.refuses("x", "b")
    assert book.install_takers("x", 7, frozenset({"a", "c"}))
    assert book.refuses("x", "b") and not book.refuses("x", "c")


@given(news, st.randoms())
def test_takers_are_held_only_for_the_newest_sell_out(items, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    book = SoldOutBook()
    for sku, version, sold_out in shuffled:
        book.learn(sku, version, sold_out)
        book.install_takers(sku, version, frozenset({f"{sku}-{version}"}))
    for sku in ("a", "b", "c"):
        mine = [n for n in items if n[0] == sku]
        newest = max(mine, key=lambda n: n[1]) if mine else None
        refusing = book.refuses(sku, "someone else")
        assert refusing == (newest is not None and newest[2])
        if refusing:
            assert not book.refuses(sku, f"{sku}-{newest[1]}")
