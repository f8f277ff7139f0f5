"""Value objects: ``Keys``, the idempotency keys an ingest reports."""

from __future__ import annotations

import pyarrow as pa
import pytest

import engine
from engine.models import Keys


def test_keys_read_like_the_list_of_their_strings() -> None:
    keys = Keys(pa.chunked_array([["k1", "k2"], ["k3"]]))
    assert len(keys) == 3
    assert list(keys) == ["k1", "k2", "k3"]
    assert keys[0] == "k1"
    assert keys[-1] == "k3"
    assert keys[1:] == ["k2", "k3"]
    assert "k2" in keys
    assert repr(keys) == "['k1', 'k2', 'k3']"
    with pytest.raises(IndexError):
        keys[3]


def test_keys_equal_any_sequence_of_the_same_strings_in_order() -> None:
    keys = Keys(pa.array(["k1", "k2"]))
    assert keys == ["k1", "k2"]
    assert ["k1", "k2"] == keys  # noqa: SIM300 - the list on the left is the point
    assert keys == ("k1", "k2")
    assert keys == Keys(["k1", "k2"])
    assert keys != ["k2", "k1"]
    assert keys != ["k1"]
    assert keys != "k1k2"
    assert Keys() == []
    assert engine.IngestResult(ingested=keys) == engine.IngestResult(ingested=["k1", "k2"])
