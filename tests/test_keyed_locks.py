"""The store's per-rollout locks within one process (shared/clients/store_base.py KeyedLocks):
requests of one instance queue on a rollout instead of contending in Firestore, and nothing is
kept for the rollouts nobody is working on."""

from __future__ import annotations


def test_the_per_rollout_locks_of_a_process_are_freed_when_nobody_holds_them():
    import threading

    from shared.clients.store import KeyedLocks

    locks = KeyedLocks()
    order: list[str] = []

    def second() -> None:
        with locks("r1"):
            order.append("second")

    waiter = threading.Thread(target=second)
    with locks("r1"):
        with locks("r2"):
            assert len(locks) == 2
        waiter.start()
        waiter.join(0.2)
        assert order == [] and len(locks) == 1  # r2 freed; r1 held, its waiter queued on it
        order.append("first")
    waiter.join(5)
    assert order == ["first", "second"]
    assert len(locks) == 0  # nothing kept once nobody holds or waits
