import orjson

from streaming.hub.index import MAX_FRAME_BYTES, Subscription, SubscriptionIndex, encode_frames


def items(*texts: str) -> set[Subscription]:
    return {Subscription(*text.split(".", 1)) for text in texts}


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
    index.set_subscriptions("wide", items("T.*", "Q.AAPL"))
    index.set_subscriptions("narrow", items("T.AAPL"))
    events = [event("T", "AAPL", 1), event("Q", "MSFT", 2), event("T", "MSFT", 3), event("Q", "AAPL", 4)]
    result = routed(index, events)
    assert result["wide"] == [events[0][2], events[2][2], events[3][2]]
    assert result["narrow"] == [events[0][2]]


def test_wildcard_and_symbol_of_one_type_deliver_once():
    index = SubscriptionIndex()
    index.set_subscriptions("both", items("T.*", "T.AAPL"))
    events = [event("T", "AAPL"), event("T", "MSFT")]
    assert routed(index, events)["both"] == [e[2] for e in events]
    index.set_subscriptions("both", items("T.AAPL"))  # the wildcard removed: the symbol still arrives
    assert routed(index, events)["both"] == [events[0][2]]


def test_identical_subscriptions_share_one_group():
    index = SubscriptionIndex()
    for client in range(100):
        index.set_subscriptions(client, items("T.*"))
    groups = index.route([event("T", "X")])
    assert len(groups) == 1 and len(groups[0].members) == 100


def test_reference_counts_drive_upstream_items():
    index = SubscriptionIndex()
    index.set_subscriptions("a", items("T.AAPL", "T.*"))
    index.set_subscriptions("b", items("T.AAPL"))
    assert index.upstream_items() == items("T.AAPL", "T.*")
    index.remove("a")
    assert index.upstream_items() == items("T.AAPL")
    index.set_subscriptions("b", set())
    assert index.upstream_items() == set() and index.clients() == []
    assert index.route([event("T", "AAPL")]) == []


def test_clients_of_an_item_include_wildcard_holders():
    index = SubscriptionIndex()
    index.set_subscriptions("a", items("T.*"))
    index.set_subscriptions("b", items("T.AAPL"))
    index.set_subscriptions("c", items("Q.AAPL"))
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
