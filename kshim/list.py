"""Doubly linked lists with an embedded node, as the kernel's list_head.

Twin of include/linux/list.h.

Contexts: any; the caller holds whatever lock protects the list.

Differs from the kernel: list_entry() needs no container_of arithmetic: a
node made with list_head(owner) knows its owner object. Iteration helpers
are generators; the _safe variant tolerates deleting the current entry.
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


def INIT_LIST_HEAD(head: list_head) -> None:
    head.next = head
    head.prev = head


def __list_add(new: list_head, prev: list_head, nxt: list_head) -> None:
    nxt.prev = new
    new.next = nxt
    new.prev = prev
    prev.next = new


def list_add(new: list_head, head: list_head) -> None:
    __list_add(new, head, head.next)


def list_add_tail(new: list_head, head: list_head) -> None:
    __list_add(new, head.prev, head)


def list_del(entry: list_head) -> None:
    entry.next.prev = entry.prev
    entry.prev.next = entry.next
    entry.next = entry.prev = None   # the kernel's LIST_POISON: use after del faults


def list_del_init(entry: list_head) -> None:
    entry.next.prev = entry.prev
    entry.prev.next = entry.next
    entry.next = entry.prev = entry


def list_move(entry: list_head, head: list_head) -> None:
    list_del_init(entry)
    list_add(entry, head)


def list_move_tail(entry: list_head, head: list_head) -> None:
    list_del_init(entry)
    list_add_tail(entry, head)


def list_empty(head: list_head) -> bool:
    return head.next is head


def list_is_singular(head: list_head) -> bool:
    return head.next is not head and head.next is head.prev


def list_splice_init(lst: list_head, head: list_head) -> None:
    """Move all entries of lst to the front of head; lst becomes empty."""
    if lst.next is lst:
        return
    first, last, at = lst.next, lst.prev, head.next
    first.prev = head
    head.next = first
    last.next = at
    at.prev = last
    INIT_LIST_HEAD(lst)


def list_splice_tail_init(lst: list_head, head: list_head) -> None:
    if lst.next is lst:
        return
    first, last, at = lst.next, lst.prev, head.prev
    first.prev = at
    at.next = first
    last.next = head
    head.prev = last
    INIT_LIST_HEAD(lst)


def list_entry(node: list_head) -> Any:
    return node.owner


def list_first_entry(head: list_head) -> Any:
    return head.next.owner


def list_first_entry_or_null(head: list_head) -> Any:
    return None if head.next is head else head.next.owner


def list_last_entry(head: list_head) -> Any:
    return head.prev.owner


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


def list_count(head: list_head) -> int:
    n = 0
    node = head.next
    while node is not head:
        n += 1
        node = node.next
    return n
