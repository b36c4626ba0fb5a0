"""kshim.list: list_head and hlist operations."""
from __future__ import annotations

import pytest

from kshim.list import (INIT_HLIST_HEAD, hlist_add_before, hlist_add_behind, hlist_add_head,
                        hlist_del, hlist_del_init, hlist_empty, hlist_for_each_entry,
                        hlist_for_each_entry_safe, hlist_head, hlist_node, hlist_unhashed,
                        list_add, list_add_tail, list_count, list_cut_position, list_del,
                        list_del_init, list_empty, list_first_entry, list_first_entry_or_null,
                        list_for_each_entry, list_for_each_entry_reverse,
                        list_for_each_entry_safe, list_head, list_is_last, list_is_singular,
                        list_last_entry, list_move, list_move_tail, list_replace,
                        list_rotate_left, list_splice_init, list_splice_tail_init)


class item:
    def __init__(self, n: int) -> None:
        self.n = n
        self.node = list_head(self)
        self.hnode = hlist_node(self)


def names(head: list_head) -> list[int]:
    return [x.n for x in list_for_each_entry(head)]


def test_add_and_add_tail_build_stack_and_queue_orders():
    head = list_head()
    a, b, c = item(1), item(2), item(3)
    list_add_tail(a.node, head)
    list_add_tail(b.node, head)
    list_add(c.node, head)
    assert names(head) == [3, 1, 2]
    assert list_first_entry(head) is c and list_last_entry(head) is b
    assert [x.n for x in list_for_each_entry_reverse(head)] == [2, 1, 3]
    assert list_count(head) == 3 and list_is_last(b.node, head)


def test_del_poisons_the_node_and_del_init_leaves_it_reusable():
    head = list_head()
    a, b = item(1), item(2)
    list_add_tail(a.node, head)
    list_add_tail(b.node, head)
    list_del(a.node)
    assert a.node.next is None and names(head) == [2]
    with pytest.raises(AttributeError):
        list_del(a.node)                     # a second del faults, as LIST_POISON does
    list_del_init(b.node)
    assert list_empty(head) and list_empty(b.node)
    assert list_first_entry_or_null(head) is None


def test_safe_iteration_tolerates_deleting_the_current_entry():
    head = list_head()
    items = [item(n) for n in range(5)]
    for x in items:
        list_add_tail(x.node, head)
    for x in list_for_each_entry_safe(head):
        if x.n % 2:
            list_del_init(x.node)
    assert names(head) == [0, 2, 4]


def test_move_splice_rotate_replace_and_cut():
    h1, h2 = list_head(), list_head()
    items = [item(n) for n in range(6)]
    for x in items[:3]:
        list_add_tail(x.node, h1)
    for x in items[3:]:
        list_add_tail(x.node, h2)
    list_move(items[2].node, h1)
    assert names(h1) == [2, 0, 1]
    list_move_tail(items[2].node, h1)
    assert names(h1) == [0, 1, 2]
    list_splice_tail_init(h2, h1)
    assert names(h1) == [0, 1, 2, 3, 4, 5] and list_empty(h2)
    list_rotate_left(h1)
    assert names(h1) == [1, 2, 3, 4, 5, 0]
    new = item(9)
    list_replace(items[3].node, new.node)
    assert names(h1) == [1, 2, 9, 4, 5, 0]
    list_cut_position(h2, h1, new.node)
    assert names(h2) == [1, 2, 9] and names(h1) == [4, 5, 0]
    list_splice_init(h2, h1)
    assert names(h1) == [1, 2, 9, 4, 5, 0]
    one = list_head()
    list_add(item(7).node, one)
    assert list_is_singular(one)


def test_hlist_add_delete_and_iterate():
    h = hlist_head()
    a, b, c, d = item(1), item(2), item(3), item(4)
    assert hlist_empty(h) and hlist_unhashed(a.hnode)
    hlist_add_head(a.hnode, h)
    hlist_add_head(b.hnode, h)
    hlist_add_behind(c.hnode, b.hnode)
    hlist_add_before(d.hnode, a.hnode)
    assert [x.n for x in hlist_for_each_entry(h)] == [2, 3, 4, 1]
    hlist_del(b.hnode)
    assert [x.n for x in hlist_for_each_entry(h)] == [3, 4, 1] and hlist_unhashed(b.hnode)
    for x in hlist_for_each_entry_safe(h):
        hlist_del_init(x.hnode)
    assert hlist_empty(h)
    hlist_del_init(a.hnode)                    # already unhashed: fine
    INIT_HLIST_HEAD(h)
