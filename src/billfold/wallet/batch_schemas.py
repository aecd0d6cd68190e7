"""Request and answer of `POST /api/admin/v1/usage-charges/batch`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from billfold.schemas import ErrorObject, RequestModel, ResponseModel
from billfold.wallet.schemas import UsageChargeOut, UsageChargeRequest

MAX_BATCH_ITEMS = 1000

BatchItemStatus = Literal["charged", "replayed", "insufficient_funds", "invalid", "refused"]


class UsageBatchItem(UsageChargeRequest):
    """One charge of a batch: a usage charge's fields and its own idempotency key."""

    idempotency_key: str = Field(min_length=1, max_length=255)


class UsageBatchRequest(RequestModel):
    charges: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description=(
            "Up to 1,000 charges, each a usage charge (account_id, amount, usecase, "
            "description?, metadata?) with its own `idempotency_key`. Each is checked, "
            "charged or refused on its own."
        ),
    )


class UsageBatchItemOut(ResponseModel):
    index: int
    idempotency_key: str | None
    status: BatchItemStatus = Field(
        description=(
            "charged; replayed (this key's stored outcome: `charge` or `error`); "
            "insufficient_funds; invalid (a bad item, an unknown account, a key reused "
            "with another payload); refused (any other error, e.g. the key is in use)"
        )
    )
    http_status: int = Field(description="What the item would have answered on its own")
    charge: UsageChargeOut | None = None
    error: ErrorObject | None = None


class UsageBatchOut(ResponseModel):
    items: list[UsageBatchItemOut]
    charged: int = Field(description="Items charged by this request")
    replayed: int
    refused: int = Field(description="Items neither charged nor replayed")
