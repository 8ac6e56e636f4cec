"""Reconnect recovery (bench/reconnect.py) on small hand-written records in the format the
load client writes them (tools/wsload: main.go's writer, session.go and reconnect.go's
marks): what each dropped socket was owed, got, missed and got twice."""

from __future__ import annotations

import pytest

from bench.reconnect import Plan, read_record, recovery

T = 1_765_101_600.0  # the step's start, epoch seconds

# A Percolert alert names its search by when the server made it (its `at`), as the search's
# answer did: rig.searches_by_time's map. Search N is sent at T + N.
MADE = {f"s{n}": f"2026-12-07T10:00:0{n}.000000Z" for n in range(1, 7)}
SEARCH_OF = {made: search for search, made in MADE.items()}
SENT = {search: T + n for n, search in enumerate(MADE, start=1)}


def tracked(search: str, at: float, seq: int, socket: int, tag: str) -> str:
    """An alert on a socket rounds drop: main.go's `%s %.6f %d %d %s`."""
    return f"{MADE[search]} {at:.6f} {seq} {socket} {tag}\n"


def mark(name: str, at: float, number: int, socket: int, tag: str) -> str:
    """A reconnect mark, as `!dropped 4 0 c0` in reconnect_test.go with its time."""
    return f"{name} {at:.6f} {number} {socket} {tag}\n"


def untracked(search: str, at: float, seq: int) -> str:
    """An alert on any other socket: main.go's `%s %.6f %d`."""
    return f"{MADE[search]} {at:.6f} {seq}\n"


def everything(socket: int) -> set[str]:
    return set(SENT)


# Socket 9 saw s1, was dropped at T + 2.5 with s2 in flight, was greeted again at T + 4.5;
# the greeting replayed s2..s4 (sent while it was away), s5 and s6 came live after it.
WHOLE = [
    tracked("s1", T + 1.010, 1, 9, "c0"),
    mark("!dropped", T + 2.5, 1, 9, "c0"),
    mark("!round", T + 2.6, 1, -1, "-"),
    mark("!resumed", T + 4.5, 4, 9, "c1"),
    tracked("s2", T + 4.51, 2, 9, "r1"),
    tracked("s3", T + 4.51, 3, 9, "r1"),
    tracked("s4", T + 4.52, 4, 9, "r1"),
    tracked("s5", T + 5.02, 5, 9, "c1"),
    tracked("s6", T + 6.02, 6, 9, "c1"),
]


def test_the_record_gives_each_dropped_socket_its_marks_and_alerts() -> None:
    sockets, dropped = read_record(WHOLE, SEARCH_OF)
    assert dropped == 1
    assert list(sockets) == [9]
    state = sockets[9]
    assert (state.dropped_at, state.resumed_at) == (T + 2.5, T + 4.5)  # exact in binary
    assert state.recovered is None  # no `+recovered` word: a server that says nothing
    assert not state.unresumed
    assert [(a.search, a.seq, a.connection, a.replayed) for a in state.arrivals] == [
        ("s1", 1, 0, False),
        ("s2", 2, 1, True),
        ("s3", 3, 1, True),
        ("s4", 4, 1, True),
        ("s5", 5, 1, False),
        ("s6", 6, 1, False),
    ]


def test_a_socket_that_resumed_and_got_everything() -> None:
    summed = recovery(read_record(WHOLE, SEARCH_OF)[0], everything, SENT)
    assert (summed.dropped, summed.resumed, summed.complete) == (1, 1, 1)
    # s1 came before the drop; s5 and s6 were sent after the greeting: s2, s3 and s4 owed.
    assert (summed.expected_away, summed.received_after) == (3, 3)
    assert (summed.missed, summed.twice) == (0, 0)
    assert summed.recovered is None
    assert summed.replayed == 3
    assert summed.replayed_ms == pytest.approx([2510.0, 1510.0, 520.0])
    assert summed.away_ms == pytest.approx([2000.0])


def test_a_socket_that_missed_an_alert_owed_while_away() -> None:
    record = [line for line in WHOLE if not line.startswith(MADE["s3"])]
    summed = recovery(read_record(record, SEARCH_OF)[0], everything, SENT)
    assert (summed.expected_away, summed.received_after) == (3, 2)
    assert (summed.missed, summed.twice) == (1, 0)
    assert (summed.resumed, summed.complete) == (1, 0)


def test_searches_sent_after_the_greeting_are_not_owed_but_still_missed() -> None:
    # s6 (sent at T + 6, after the greeting at T + 4.5) never came.
    record = [line for line in WHOLE if not line.startswith(MADE["s6"])]
    summed = recovery(read_record(record, SEARCH_OF)[0], everything, SENT)
    assert (summed.expected_away, summed.received_after) == (3, 3)
    assert (summed.missed, summed.complete) == (1, 0)
    # Greeted only at T + 5.5: s5 was sent while it was away, so it is owed too.
    later = [
        mark("!resumed", T + 5.5, 4, 9, "c1") if line.startswith("!resumed") else line
        for line in WHOLE
    ]
    summed = recovery(read_record(later, SEARCH_OF)[0], everything, SENT)
    assert (summed.expected_away, summed.received_after, summed.missed) == (4, 4, 0)


def test_an_alert_received_twice_on_one_socket_counts_once_and_is_not_deduplicated() -> None:
    # The replay repeats s1 (seen before the drop) and s3 comes twice, as
    # reconnect_test.go's `s-6 6 0 r1` does; socket 19 also gets s3, which is no repeat.
    record = [
        *WHOLE,
        tracked("s1", T + 4.51, 1, 9, "r1"),
        tracked("s3", T + 4.51, 3, 9, "r1"),
        tracked("s3", T + 4.53, 3, 9, "c1"),
        mark("!dropped", T + 2.7, 3, 19, "c0"),
        tracked("s3", T + 4.6, 3, 19, "r1"),
    ]
    sockets, _ = read_record(record, SEARCH_OF)
    assert len(sockets[9].arrivals) == 9
    summed = recovery(sockets, everything, SENT)
    assert summed.twice == 2  # s1 and s3 on socket 9, s3 three times counted once
    assert summed.replayed == 6  # every copy the greetings replayed, repeats included
    # Repeats change nothing else: socket 9 still got everything, socket 19 only s3.
    assert (summed.dropped, summed.resumed, summed.complete) == (2, 1, 1)
    assert (summed.expected_away, summed.received_after) == (3 + 6, 3 + 1)
    assert summed.missed == 5


def test_without_a_seq_an_alert_is_counted_by_its_search() -> None:
    # A notification carries no seq (0 in the record) and names its search itself.
    record = [
        mark("!dropped", T + 2.5, 0, 4, "c0"),
        mark("!resumed", T + 3.5, 0, 4, "c1"),
        "s2 1765101603.600000 0 4 c1\n",
        "s2 1765101603.700000 0 4 c1\n",
        "s3 1765101603.800000 0 4 c1\n",
        "s3 1765101603.900000 0 4 c1\n",
    ]
    summed = recovery(read_record(record, SEARCH_OF)[0], lambda socket: {"s2", "s3"}, SENT)
    assert summed.twice == 2  # s2 and s3, not one seq 0 four times
    assert (summed.expected_away, summed.received_after, summed.missed) == (2, 2, 0)


def test_a_socket_that_never_resumed_is_owed_everything_it_had_not_seen() -> None:
    record = [
        tracked("s1", T + 1.010, 1, 9, "c0"),
        mark("!dropped", T + 2.5, 1, 9, "c0"),
        mark("!round", T + 2.6, 1, -1, "-"),
        mark("!unresumed", T + 12.5, 0, 9, "c1"),
    ]
    sockets, _ = read_record(record, SEARCH_OF)
    assert sockets[9].unresumed
    assert sockets[9].resumed_at is None
    summed = recovery(sockets, everything, SENT)
    assert (summed.dropped, summed.resumed, summed.complete) == (1, 0, 0)
    assert (summed.expected_away, summed.received_after, summed.missed) == (5, 0, 5)
    assert summed.away_ms == []
    assert summed.recovered is None


def test_centrifugos_word_on_a_resume_is_counted() -> None:
    # reconnect_test.go's `!resumed 9 3 c1+recovered`, and an unrecovered one beside it.
    record = [
        tracked("s1", T + 1.01, 1, 3, "c0"),
        mark("!dropped", T + 2.5, 1, 3, "c0"),
        mark("!dropped", T + 2.6, 1, 13, "c0"),
        mark("!resumed", T + 4.5, 4, 3, "c1+recovered"),
        mark("!resumed", T + 4.6, 4, 13, "c1+unrecovered"),
        tracked("s2", T + 4.51, 2, 3, "r1"),
    ]
    sockets, _ = read_record(record, SEARCH_OF)
    assert (sockets[3].recovered, sockets[13].recovered) == (True, False)
    assert sockets[3].arrivals[-1].connection == 1
    summed = recovery(sockets, lambda socket: {"s1", "s2"}, SENT)
    assert (summed.resumed, summed.recovered) == (2, 1)
    # Said unrecovered by both: 0, not "no word" (None).
    unrecovered = [line.replace("+recovered", "+unrecovered") for line in record]
    assert recovery(read_record(unrecovered, SEARCH_OF)[0], everything, SENT).recovered == 0


def test_lines_of_sockets_no_round_dropped_are_ignored() -> None:
    noise = [
        untracked("s2", T + 2.01, 2),  # a socket rounds never drop: no socket, no tag
        untracked("s3", T + 3.01, 7),
        "!closed 1765101603.500000 0\n",  # a socket the server closed
        tracked("s2", T + 2.02, 2, 29, "c0"),  # a tracked socket this round did not drop
        tracked("s3", T + 3.02, 3, 29, "c0"),
        tracked("s3", T + 3.03, 3, 29, "c0"),
        "\n",
    ]
    sockets, dropped = read_record([*noise[:3], *WHOLE, *noise[3:]], SEARCH_OF)
    assert sorted(sockets) == [9, 29]
    assert sockets[29].dropped_at is None
    asked: list[int] = []

    def expected(socket: int) -> set[str]:
        asked.append(socket)
        return set(SENT)

    summed = recovery(sockets, expected, SENT)
    assert asked == [9]
    alone = recovery(read_record(WHOLE, SEARCH_OF)[0], everything, SENT)
    assert summed == alone
    assert (summed.dropped, summed.twice, summed.missed) == (1, 0, 0)
    assert dropped == 1


def test_round_counts_are_summed_and_absent_before_the_first() -> None:
    assert read_record(WHOLE[:2], SEARCH_OF)[1] is None
    rounds = [
        "!round 1765101602.600000 3 -1 -\n",
        "!round 1765101612.600000 2 -1 -\n",
        "!round 1765101622.600000 0 -1 -\n",
    ]
    assert read_record(rounds, SEARCH_OF) == ({}, 5)
    assert read_record(rounds[2:], SEARCH_OF)[1] == 0


def test_the_plan_drops_from_30_percent_into_the_step_over_a_tenth_of_it() -> None:
    plan = Plan(share=0.1, away_s=1.5)
    assert plan.rate is None
    assert plan.spec(5.0) == {"share": 0.1, "delay_s": 1.5, "spread_s": 0.5, "away_s": 1.5}
    # Rounded to the millisecond: 0.1 * 7 is 0.7000000000000001 in floating point.
    assert Plan(share=0.25, away_s=3.0, rate=50.0).spec(7.0) == {
        "share": 0.25,
        "delay_s": 2.1,
        "spread_s": 0.7,
        "away_s": 3.0,
    }
