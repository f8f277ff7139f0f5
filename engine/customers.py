"""Customers: the owners of events. An event names its customer by Orb's id or by an external
id that need not exist yet."""

from __future__ import annotations

import secrets
import string
from typing import Any

from sqlglot import exp

from engine.context import Context, from_storage
from engine.errors import ConstraintViolation, DuplicateResourceCreation, ResourceNotFound
from engine.models import Customer
from engine.queries import table_ref
from engine.schema import CUSTOMERS

__all__ = ["Customers", "both_ids", "new_id"]

_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(length: int = 22) -> str:
    """A random identifier in Orb's style (letters and digits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def both_ids(
    context: Context, customer_id: str | None, external_customer_id: str | None
) -> tuple[str | None, str | None]:
    """``(customer_id, external_customer_id)`` of a customer named by one of them, the other
    looked up in ``customers``: an event names its customer either way, so a scope must match
    both. An unknown customer keeps only the id given."""

    def lookup(column: str, by: str, value: str) -> str | None:
        row = context.storage.one(
            exp.select(column)
            .from_(table_ref(CUSTOMERS))
            .where(exp.column(by).eq(exp.convert(value)))
        )
        return row[0] if row else None

    if customer_id is not None and external_customer_id is None:
        external_customer_id = lookup("external_customer_id", "id", customer_id)
    elif external_customer_id is not None and customer_id is None:
        customer_id = lookup("id", "external_customer_id", external_customer_id)
    return customer_id, external_customer_id


def _customer(row: tuple[Any, ...]) -> Customer:
    id_, external_customer_id, name, email, created_at = row
    created = from_storage(created_at)
    assert created is not None
    return Customer(
        id=id_,
        external_customer_id=external_customer_id,
        name=name,
        email=email,
        created_at=created,
    )


def _select() -> exp.Select:
    return exp.select(*CUSTOMERS.column_names).from_(table_ref(CUSTOMERS))


class Customers:
    """``store.customers``: create and look up customers."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def create(
        self,
        *,
        external_customer_id: str | None = None,
        name: str | None = None,
        email: str | None = None,
    ) -> Customer:
        """Create a customer; ``external_customer_id`` must be unused.

        >>> store.customers.create(external_customer_id="acme", name="Acme")  # doctest: +SKIP
        """
        for field, value in (
            ("external_customer_id", external_customer_id),
            ("name", name),
            ("email", email),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConstraintViolation(f"{field} must be a non-empty string", field=field)
        storage = self._context.storage
        with storage.write():
            if external_customer_id is not None and self._find(
                "external_customer_id", external_customer_id
            ):
                raise DuplicateResourceCreation(
                    f"a customer with external_customer_id {external_customer_id!r} already exists",
                    external_customer_id=external_customer_id,
                )
            customer_id = new_id()
            now = self._context.now()
            values = exp.select(
                *(
                    exp.cast(exp.convert(v), "VARCHAR")
                    for v in (customer_id, external_customer_id, name, email)
                ),
                exp.convert(now),
            )
            storage.execute(exp.insert(values, table_ref(CUSTOMERS)))
        return _customer((customer_id, external_customer_id, name, email, now))

    def get(self, customer_id: str) -> Customer:
        """The customer with Orb id ``customer_id`` (``ResourceNotFound`` otherwise)."""
        found = self._find("id", customer_id)
        if found is None:
            raise ResourceNotFound(
                f"customer {customer_id!r} does not exist", customer_id=customer_id
            )
        return found

    def get_by_external_id(self, external_customer_id: str) -> Customer:
        """The customer whose external id is ``external_customer_id``."""
        found = self._find("external_customer_id", external_customer_id)
        if found is None:
            raise ResourceNotFound(
                f"no customer has external_customer_id {external_customer_id!r}",
                external_customer_id=external_customer_id,
            )
        return found

    def list(self) -> list[Customer]:
        """Every customer, oldest first."""
        rows = self._context.storage.rows(_select().order_by("created_at", "id"))
        return [_customer(row) for row in rows]

    def _find(self, column: str, value: str) -> Customer | None:
        rows = self._context.storage.rows(
            _select().where(exp.column(column).eq(exp.convert(value))).limit(1)
        )
        return _customer(rows[0]) if rows else None
