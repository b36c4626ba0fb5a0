"""Doubly linked lists with an embedded node (list_head) and hash lists (hlist).

Twin of include/linux/list.h and the _rcu variants of include/linux/rculist.h.

Contexts: any; the caller holds whatever lock protects the list.

Differs from the kernel: list_entry() needs no container_of arithmetic: a
node made with list_head(owner) knows its owner object (hlist_node too).
Iteration helpers are generators; the _safe variants tolerate deleting the
current entry. list_del() "poisons" the node by setting next/prev to None
(the kernel's LIST_POISON1/2), so a second list_del or a walk from a deleted
node fails at once with an AttributeError. The _rcu variants are the plain
ones: on one CPU without preemption a reader never sees a half-made update.
An empty head (or an unlinked, re-initialised node) points at itself: a
reference cycle that only the cycle collector frees, which runs rarely
here (decision 0005). list_head_release() poisons it when its owner is
being freed, so reference counting frees both at once.
"""
from __future__ import annotations

from typing import Any, Iterator


class list_head:
    __slots__ = ("next", "prev", "owner")

    def __init__(self, owner: Any = None) -> None:
        self.next = self
        self.prev = self
        self.owner = owner

    def __repr__(self) -> str:
        return f"<list_head of {type(self.owner).__name__}>"


def LIST_HEAD(owner: Any = None) -> list_head:
    return list_head(owner)


def INIT_LIST_HEAD(head: list_head) -> None:
    head.next = head
    head.prev = head


def __list_add(new: list_head, prev: list_head, nxt: list_head) -> None:
    nxt.prev = new
    new.next = nxt
    new.prev = prev
    prev.next = new


def list_add(new: list_head, head: list_head) -> None:
    """Insert new right after head (a stack push)."""
    nxt = head.next
    nxt.prev = new
    new.next = nxt
    new.prev = head
    head.next = new


def list_add_tail(new: list_head, head: list_head) -> None:
    """Insert new right before head (a queue append)."""
    prev = head.prev
    head.prev = new
    new.next = head
    new.prev = prev
    prev.next = new


def list_del(entry: list_head) -> None:
    entry.next.prev = entry.prev
    entry.prev.next = entry.next
    entry.next = entry.prev = None   # the kernel's LIST_POISON: use after del faults


def list_head_release(head: list_head) -> None:
    """uscst only: the owner of an empty head (or of an unlinked node) is
    being freed (the kernel would kfree the struct around it): poison it as
    list_del does, so it no longer points at itself. A head that is not
    empty is left alone (its entries still point at it)."""
    if head.next is head:
        head.next = head.prev = None
    head.owner = None


def list_del_init(entry: list_head) -> None:
    entry.next.prev = entry.prev
    entry.prev.next = entry.next
    entry.next = entry.prev = entry


def list_replace(old: list_head, new: list_head) -> None:
    new.next = old.next
    new.next.prev = new
    new.prev = old.prev
    new.prev.next = new


def list_replace_init(old: list_head, new: list_head) -> None:
    list_replace(old, new)
    INIT_LIST_HEAD(old)


def list_swap(a: list_head, b: list_head) -> None:
    pos = b.prev
    list_del(b)
    list_replace(a, b)
    if pos is a:
        pos = b
    list_add(a, pos)


def list_move(entry: list_head, head: list_head) -> None:
    list_del_init(entry)
    list_add(entry, head)


def list_move_tail(entry: list_head, head: list_head) -> None:
    list_del_init(entry)
    list_add_tail(entry, head)


def list_bulk_move_tail(head: list_head, first: list_head, last: list_head) -> None:
    """Move first..last (a run of head's entries) to head's tail."""
    first.prev.next = last.next
    last.next.prev = first.prev
    head.prev.next = first
    first.prev = head.prev
    last.next = head
    head.prev = last


def list_is_first(entry: list_head, head: list_head) -> bool:
    return entry.prev is head


def list_is_last(entry: list_head, head: list_head) -> bool:
    return entry.next is head


def list_is_head(entry: list_head, head: list_head) -> bool:
    return entry is head


def list_empty(head: list_head) -> bool:
    return head.next is head


list_empty_careful = list_empty


def list_is_singular(head: list_head) -> bool:
    return head.next is not head and head.next is head.prev


def list_rotate_left(head: list_head) -> None:
    if head.next is not head:
        list_move_tail(head.next, head)


def list_rotate_to_front(entry: list_head, head: list_head) -> None:
    list_del(head)
    list_add_tail(head, entry)


def list_cut_position(lst: list_head, head: list_head, entry: list_head) -> None:
    """Move head's entries up to and including entry to lst (which it empties first)."""
    if head.next is head:
        return
    if list_is_singular(head) and head.next is not entry and head is not entry:
        return
    if entry is head:
        INIT_LIST_HEAD(lst)
        return
    new_first = entry.next
    lst.next = head.next
    lst.next.prev = lst
    lst.prev = entry
    entry.next = lst
    head.next = new_first
    new_first.prev = head


def __list_splice(lst: list_head, prev: list_head, nxt: list_head) -> None:
    first, last = lst.next, lst.prev
    first.prev = prev
    prev.next = first
    last.next = nxt
    nxt.prev = last


def list_splice(lst: list_head, head: list_head) -> None:
    """Join lst's entries to the front of head (lst is left stale)."""
    if lst.next is not lst:
        __list_splice(lst, head, head.next)


def list_splice_tail(lst: list_head, head: list_head) -> None:
    if lst.next is not lst:
        __list_splice(lst, head.prev, head)


def list_splice_init(lst: list_head, head: list_head) -> None:
    """Move all entries of lst to the front of head; lst becomes empty."""
    if lst.next is lst:
        return
    __list_splice(lst, head, head.next)
    INIT_LIST_HEAD(lst)


def list_splice_tail_init(lst: list_head, head: list_head) -> None:
    if lst.next is lst:
        return
    __list_splice(lst, head.prev, head)
    INIT_LIST_HEAD(lst)


def list_entry(node: list_head) -> Any:
    return node.owner


def list_first_entry(head: list_head) -> Any:
    return head.next.owner


def list_first_entry_or_null(head: list_head) -> Any:
    return None if head.next is head else head.next.owner


def list_last_entry(head: list_head) -> Any:
    return head.prev.owner


def list_next_entry(node: list_head) -> Any:
    """The owner of the node after `node` (the caller knows it is not the head)."""
    return node.next.owner


def list_prev_entry(node: list_head) -> Any:
    return node.prev.owner


def list_for_each(head: list_head) -> Iterator[list_head]:
    node = head.next
    while node is not head:
        yield node
        node = node.next


def list_for_each_safe(head: list_head) -> Iterator[list_head]:
    node = head.next
    while node is not head:
        nxt = node.next
        yield node
        node = nxt


def list_for_each_prev(head: list_head) -> Iterator[list_head]:
    node = head.prev
    while node is not head:
        yield node
        node = node.prev


def list_for_each_entry(head: list_head) -> Iterator[Any]:
    node = head.next
    while node is not head:
        yield node.owner
        node = node.next


def list_for_each_entry_safe(head: list_head) -> Iterator[Any]:
    node = head.next
    while node is not head:
        nxt = node.next
        yield node.owner
        node = nxt


def list_for_each_entry_reverse(head: list_head) -> Iterator[Any]:
    node = head.prev
    while node is not head:
        yield node.owner
        node = node.prev


def list_for_each_entry_safe_reverse(head: list_head) -> Iterator[Any]:
    node = head.prev
    while node is not head:
        prv = node.prev
        yield node.owner
        node = prv


def list_for_each_entry_continue(pos: list_head, head: list_head) -> Iterator[Any]:
    """Owners after node `pos` up to the head."""
    node = pos.next
    while node is not head:
        yield node.owner
        node = node.next


def list_for_each_entry_from(pos: list_head, head: list_head) -> Iterator[Any]:
    node = pos
    while node is not head:
        yield node.owner
        node = node.next


def list_count(head: list_head) -> int:
    n = 0
    node = head.next
    while node is not head:
        n += 1
        node = node.next
    return n


list_count_nodes = list_count

# rculist.h: the same operations (see module doc)
list_add_rcu = list_add
list_add_tail_rcu = list_add_tail
list_replace_rcu = list_replace
list_for_each_entry_rcu = list_for_each_entry
list_first_or_null_rcu = list_first_entry_or_null


def list_del_rcu(entry: list_head) -> None:
    """Unlink entry but keep its next pointer valid for readers walking it."""
    entry.next.prev = entry.prev
    entry.prev.next = entry.next
    entry.prev = None


# -- hlist: singly anchored lists for hash tables ------------------------------------

class hlist_node:
    __slots__ = ("next", "pprev", "owner")

    def __init__(self, owner: Any = None) -> None:
        self.next: hlist_node | None = None
        self.pprev: "hlist_head | hlist_node | None" = None   # who points at us
        self.owner = owner

    def __repr__(self) -> str:
        return f"<hlist_node of {type(self.owner).__name__}>"


class hlist_head:
    __slots__ = ("first",)

    def __init__(self) -> None:
        self.first: hlist_node | None = None


def HLIST_HEAD() -> hlist_head:
    return hlist_head()


def INIT_HLIST_HEAD(h: hlist_head) -> None:
    h.first = None


def INIT_HLIST_NODE(n: hlist_node) -> None:
    n.next = None
    n.pprev = None


def hlist_unhashed(n: hlist_node) -> bool:
    return n.pprev is None


def hlist_empty(h: hlist_head) -> bool:
    return h.first is None


def _set_link(p: "hlist_head | hlist_node", n: hlist_node | None) -> None:
    if isinstance(p, hlist_head):
        p.first = n
    else:
        p.next = n


def hlist_add_head(n: hlist_node, h: hlist_head) -> None:
    first = h.first
    n.next = first
    if first is not None:
        first.pprev = n
    h.first = n
    n.pprev = h


def hlist_add_before(n: hlist_node, nxt: hlist_node) -> None:
    n.pprev = nxt.pprev
    n.next = nxt
    nxt.pprev = n
    _set_link(n.pprev, n)


def hlist_add_behind(n: hlist_node, prev: hlist_node) -> None:
    n.next = prev.next
    prev.next = n
    n.pprev = prev
    if n.next is not None:
        n.next.pprev = n


def __hlist_del(n: hlist_node) -> None:
    nxt = n.next
    _set_link(n.pprev, nxt)
    if nxt is not None:
        nxt.pprev = n.pprev


def hlist_del(n: hlist_node) -> None:
    __hlist_del(n)
    n.next = None
    n.pprev = None


def hlist_del_init(n: hlist_node) -> None:
    if n.pprev is not None:
        __hlist_del(n)
        n.next = None
        n.pprev = None


def hlist_for_each(h: hlist_head) -> Iterator[hlist_node]:
    n = h.first
    while n is not None:
        yield n
        n = n.next


def hlist_for_each_entry(h: hlist_head) -> Iterator[Any]:
    n = h.first
    while n is not None:
        yield n.owner
        n = n.next


def hlist_for_each_entry_safe(h: hlist_head) -> Iterator[Any]:
    n = h.first
    while n is not None:
        nxt = n.next
        yield n.owner
        n = nxt


def hlist_count(h: hlist_head) -> int:
    return sum(1 for _ in hlist_for_each(h))


hlist_add_head_rcu = hlist_add_head
hlist_del_rcu = hlist_del
hlist_del_init_rcu = hlist_del_init
hlist_for_each_entry_rcu = hlist_for_each_entry
