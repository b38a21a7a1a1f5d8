"""The replication protocol version negotiated at hello (replication/versions.py)."""

from __future__ import annotations

import pytest

from replication import versions
from replication.errors import ProtocolError
from replication.versions import IncompatibleProtocolError


def test_a_hello_without_versions_is_the_previous_release_speaking_version_1():
    assert versions.offered({"journal_id": "j", "epoch": 1}) == (1, 1)
    assert versions.negotiate((1, 1), "sender") == 1


def test_both_nodes_of_this_release_agree_on_the_newest_version():
    assert versions.negotiate(versions.offered(versions.offer()), "sender") == versions.PROTOCOL_VERSION


def test_a_newer_sender_that_still_speaks_ours_gets_our_newest():
    assert versions.negotiate((1, versions.PROTOCOL_VERSION + 5), "sender") == versions.PROTOCOL_VERSION


def test_no_shared_version_is_refused_naming_both_ranges():
    with pytest.raises(IncompatibleProtocolError) as caught:
        versions.negotiate((7, 9), "sender")
    message = str(caught.value)
    assert f"this node speaks versions {versions.OLDEST_PROTOCOL}-{versions.PROTOCOL_VERSION}" in message
    assert "the sender speaks versions 7-9" in message


def test_an_answer_without_a_version_is_a_replica_of_the_previous_release():
    assert versions.answered({"journal_id": "j", "applied_seq": 3}) == 1


def test_a_replica_choosing_a_version_we_did_not_offer_is_refused_naming_both():
    with pytest.raises(IncompatibleProtocolError, match=r"the replica speaks version 99\b"):
        versions.answered({"protocol": 99})


@pytest.mark.parametrize(
    "hello", [{"protocol": "2"}, {"protocol": True}, {"protocol": 0}, {"protocol": 2, "protocol_min": 3}]
)
def test_malformed_versions_are_protocol_errors(hello):
    with pytest.raises(ProtocolError):
        versions.offered(hello)
