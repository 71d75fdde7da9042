"""The link's compiled topic filters agree with paho's reference matcher, on any topic."""

from __future__ import annotations

import paho.mqtt.client as paho
from hypothesis import given
from hypothesis import strategies as st

from drivers.mqtt._link import filter_matcher

_LEVEL = st.sampled_from(["", "a", "b", "$SYS", "$x", "a.b", "a*b", "(", "+x", "é"])
_FILTER_LEVEL = st.one_of(_LEVEL, st.just("+"))


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(_FILTER_LEVEL, min_size=0, max_size=4))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    return "/".join(levels)


_TOPICS = st.lists(_LEVEL, min_size=1, max_size=5).map("/".join)


@given(_filters(), _TOPICS)
def test_a_compiled_filter_matches_what_paho_matches(topic_filter: str, topic: str) -> None:
    assert bool(filter_matcher(topic_filter)(topic)) == paho.topic_matches_sub(topic_filter, topic)


def test_the_gateway_filters_on_their_own_topics() -> None:
    nodes = filter_matcher("espresense/devices/+/+")
    assert nodes("espresense/devices/eid:0011223344556677/espresense-deli")
    assert not nodes("espresense/devices/x/room/extra")
    assert not nodes("espresense/rooms/espresense-deli/status")
    kiosks = filter_matcher("store/s1/v1/kiosk/+/identify")
    assert kiosks("store/s1/v1/kiosk/kiosk-1/identify")
    assert not kiosks("store/s1/v1/kiosk/kiosk-1/identify/x")
    assert filter_matcher("store/#")("store")
    assert not filter_matcher("#")("$SYS/broker/load")
    assert not filter_matcher("+/x")("$SYS/x")
