import orjson
from hypothesis import given, settings, strategies as st

from streaming.hub.index import MAX_FRAME_BYTES, Subscription, SubscriptionIndex, encode_frames


def items(*texts: str) -> set[Subscription]:
    return {Subscription(*text.split(".", 1)) for text in texts}


def set_subscriptions(index: SubscriptionIndex, client: str, wanted: set[Subscription]) -> None:
    """Give *client* exactly *wanted*, through the index's own add and discard."""
    held = set(index.subscriptions_of(client))
    index.discard(client, held - wanted)
    index.add(client, wanted - held)


def event(ev: str, sym: str, n: int = 0) -> tuple[str, str, bytes]:
    return ev, sym, orjson.dumps({"ev": ev, "sym": sym, "n": n})


def routed(index: SubscriptionIndex, events) -> dict[str, list[bytes]]:
    result = {}
    for group in index.route(events):
        for client in group.members:
            result[client] = list(group.batch)
        group.batch = []
    return result


def test_clients_get_exactly_their_events_in_order():
    index = SubscriptionIndex()
    set_subscriptions(index, "wide", items("T.*", "Q.AAPL"))
    set_subscriptions(index, "narrow", items("T.AAPL"))
    events = [event("T", "AAPL", 1), event("Q", "MSFT", 2), event("T", "MSFT", 3), event("Q", "AAPL", 4)]
    result = routed(index, events)
    assert result["wide"] == [events[0][2], events[2][2], events[3][2]]
    assert result["narrow"] == [events[0][2]]


def test_wildcard_and_symbol_of_one_type_deliver_once():
    index = SubscriptionIndex()
    set_subscriptions(index, "both", items("T.*", "T.AAPL"))
    events = [event("T", "AAPL"), event("T", "MSFT")]
    assert routed(index, events)["both"] == [e[2] for e in events]
    set_subscriptions(index, "both", items("T.AAPL"))  # the wildcard removed: the symbol still arrives
    assert routed(index, events)["both"] == [events[0][2]]


def test_identical_subscriptions_share_one_group():
    index = SubscriptionIndex()
    for client in range(100):
        set_subscriptions(index, client, items("T.*"))
    groups = index.route([event("T", "X")])
    assert len(groups) == 1 and len(groups[0].members) == 100


def test_reference_counts_drive_upstream_items():
    index = SubscriptionIndex()
    set_subscriptions(index, "a", items("T.AAPL", "T.*"))
    set_subscriptions(index, "b", items("T.AAPL"))
    assert index.upstream_items() == items("T.AAPL", "T.*")
    index.remove("a")
    assert index.upstream_items() == items("T.AAPL")
    set_subscriptions(index, "b", set())
    assert index.upstream_items() == set() and index.clients() == []
    assert index.route([event("T", "AAPL")]) == []


def test_clients_of_an_item_include_wildcard_holders():
    index = SubscriptionIndex()
    set_subscriptions(index, "a", items("T.*"))
    set_subscriptions(index, "b", items("T.AAPL"))
    set_subscriptions(index, "c", items("Q.AAPL"))
    assert sorted(index.clients_of(Subscription("T", "AAPL"))) == ["a", "b"]


def test_frames_stay_under_the_limit_and_keep_order():
    events = [orjson.dumps({"ev": "T", "i": i, "pad": "x" * 200}) for i in range(20_000)]
    frames = encode_frames(events)
    assert len(frames) > 1
    assert all(len(frame) < MAX_FRAME_BYTES for frame in frames)
    decoded = [item for frame in frames for item in orjson.loads(frame)]
    assert [item["i"] for item in decoded] == list(range(20_000))


def test_small_batches_make_one_frame():
    assert encode_frames([b'{"a":1}', b'{"b":2}']) == [b'[{"a":1},{"b":2}]']
    assert encode_frames([b'{"a":1}', b'{"b":2}'], limit=12) == [b'[{"a":1}]', b'[{"b":2}]']


# --- the index against a plain model: a dict of each client's set, matched naively ------------------------------

ITEMS = [Subscription(ev, sym) for ev in ("T", "Q") for sym in ("*", "AAPL", "MSFT", "BRK.B")]
CLIENTS = ["a", "b", "c"]
operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "discard", "remove", "set"]),
        st.sampled_from(CLIENTS),
        st.sets(st.sampled_from(ITEMS), max_size=5),
    ),
    max_size=40,
)


def naive_routing(model: dict[str, set[Subscription]], events) -> dict[str, list[bytes]]:
    result: dict[str, list[bytes]] = {}
    for client, held in model.items():
        taken = [encoded for ev, sym, encoded in events
                 if Subscription(ev, sym) in held or Subscription(ev, "*") in held]
        if taken:
            result[client] = taken
    return result


@settings(max_examples=300, deadline=None, database=None)
@given(operations)
def test_any_sequence_of_changes_routes_like_the_plain_model(steps):
    index = SubscriptionIndex()
    model: dict[str, set[Subscription]] = {}
    for operation, client, chosen in steps:
        before = {item for held in model.values() for item in held}
        held = model.setdefault(client, set())
        if operation == "add":
            edges = index.add(client, chosen)
            held |= chosen
        elif operation == "discard":
            edges = index.discard(client, chosen)
            held -= chosen
        elif operation == "remove":
            edges = index.remove(client)
            held.clear()
        else:
            set_subscriptions(index, client, chosen)
            held.clear()
            held |= chosen
            edges = None
        if not held:
            del model[client]
        after = {item for held in model.values() for item in held}
        if edges is not None:
            assert set(edges) == (after - before if operation == "add" else before - after)
            assert len(edges) == len(set(edges))
        assert index.upstream_items() == after
        assert {client: set(index.subscriptions_of(client)) for client in index.clients()} == model
        assert index.group_count() == len({frozenset(held) for held in model.values()})
        for item in ITEMS:
            assert sorted(index.clients_of(item)) == sorted(
                client for client, held in model.items() if item in held or Subscription(item.event_type, "*") in held
            )
    events = [event(ev, sym, n) for n, (ev, sym) in enumerate(
        [("T", "AAPL"), ("Q", "MSFT"), ("T", "BRK.B"), ("Q", "AAPL"), ("T", "ZZZ")]
    )]
    assert routed(index, events) == naive_routing(model, events)


def test_a_change_to_a_large_subscription_costs_the_change_not_the_set():
    """A client alone in its group changes it in place: adding one item to 50,000 must not copy the 50,000."""
    index = SubscriptionIndex()
    large = {Subscription("T", f"S{n}") for n in range(50_000)}
    index.add("big", large)
    group = index.route([event("T", "S1")])[0]
    group.batch = []
    assert index.add("big", [Subscription("T", "NEW")]) == [Subscription("T", "NEW")]
    assert index.route([event("T", "NEW")]) == [group]  # the same group object, changed in place
    group.batch = []
    assert index.discard("big", [Subscription("T", "S7")]) == [Subscription("T", "S7")]
    assert index.route([event("T", "S7")]) == []
    assert index.route([event("T", "S8")]) == [group]
