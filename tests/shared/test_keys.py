from shared.keys import Keys


def test_queue_keys_share_one_cluster_slot() -> None:
    keys = Keys("jq", "emails")
    names = [*keys.streams(), keys.scheduled, keys.held, keys.leader]
    assert all("{emails}" in name for name in names)
    assert keys.streams() == ["jq:{emails}:stream:high", "jq:{emails}:stream:default",
                              "jq:{emails}:stream:low"]
