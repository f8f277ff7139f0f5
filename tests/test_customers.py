"""``store.customers``: create, look up, list; the 400 / 404 rules and what they leave behind."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from procs.common import NOW, FakeClock, event, fingerprint

import engine
from engine.errors import ConstraintViolation, DuplicateResourceCreation, ResourceNotFound


def test_create_get_and_lookup_by_external_id(store: engine.Store) -> None:
    created = store.customers.create(external_customer_id="acme", name="Acme", email="a@acme.io")
    assert created.external_customer_id == "acme"
    assert created.name == "Acme" and created.email == "a@acme.io"
    assert created.created_at == NOW
    assert store.customers.get(created.id) == created
    assert store.customers.get_by_external_id("acme") == created


def test_ids_are_distinct_and_external_id_is_optional(store: engine.Store) -> None:
    first = store.customers.create()
    second = store.customers.create()
    assert first.id != second.id
    assert first.external_customer_id is None and second.external_customer_id is None
    assert {c.id for c in store.customers.list()} == {first.id, second.id}


def test_list_is_oldest_first(store: engine.Store, clock: FakeClock) -> None:
    ids = []
    for name in ("c", "a", "b"):
        ids.append(store.customers.create(external_customer_id=name).id)
        clock.advance(timedelta(seconds=1))
    assert [c.id for c in store.customers.list()] == ids


def test_duplicate_external_id_is_refused_and_changes_nothing(store: engine.Store) -> None:
    original = store.customers.create(external_customer_id="acme", name="first")
    before = fingerprint(store)
    with pytest.raises(DuplicateResourceCreation) as info:
        store.customers.create(external_customer_id="acme", name="second")
    assert "acme" in str(info.value) and "already exists" in str(info.value)
    assert info.value.status == 400
    assert isinstance(info.value, ValueError)
    assert fingerprint(store) == before
    assert store.customers.list() == [original]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"external_customer_id": ""}, "external_customer_id"),
        ({"external_customer_id": 42}, "external_customer_id"),
        ({"name": ""}, "name"),
        ({"email": ["a@b.c"]}, "email"),
    ],
)
def test_invalid_fields_are_refused_and_change_nothing(
    store: engine.Store, kwargs: dict[str, Any], field: str
) -> None:
    before = fingerprint(store)
    with pytest.raises(ConstraintViolation) as info:
        store.customers.create(**kwargs)
    assert field in str(info.value)
    assert info.value.status == 400
    assert fingerprint(store) == before


def test_unknown_customer_is_404(store: engine.Store) -> None:
    store.customers.create(external_customer_id="acme")
    with pytest.raises(ResourceNotFound) as info:
        store.customers.get("cus_missing")
    assert "cus_missing" in str(info.value)
    assert info.value.status == 404 and isinstance(info.value, LookupError)
    with pytest.raises(ResourceNotFound) as by_external:
        store.customers.get_by_external_id("globex")
    assert "globex" in str(by_external.value)


def test_events_by_customer_id_need_the_customer(store: engine.Store) -> None:
    customer = store.customers.create(external_customer_id="acme")
    result = store.ingest([event("k1", NOW, customer_id=customer.id)])
    assert result.ingested == ["k1"]
    before = fingerprint(store)
    with pytest.raises(engine.RequestValidationError) as info:
        store.ingest([event("k2", NOW, customer_id="cus_missing")])
    (problem,) = info.value.validation_errors
    assert problem["idempotency_key"] == "k2"
    assert any("cus_missing" in message for message in problem["validation_errors"])
    assert fingerprint(store) == before


def test_events_by_external_id_need_no_customer(store: engine.Store) -> None:
    assert store.ingest([event("k1", NOW, ext="not-yet-a-customer")]).ingested == ["k1"]
    # the customer may come later; creating it does not touch the events
    store.customers.create(external_customer_id="not-yet-a-customer")
    (row,) = store.sql("SELECT external_customer_id, customer_id FROM events").fetchall()
    assert row == ("not-yet-a-customer", None)


def test_customers_view(store: engine.Store) -> None:
    customer = store.customers.create(external_customer_id="acme", name="Acme")
    rows = store.sql("SELECT id, external_customer_id, name FROM customers").fetchall()
    assert rows == [(customer.id, "acme", "Acme")]
