"""Use cases: everything a front end can ask of Billfold, one plain function each.

HTTP routers, jobs, tests, and next the MCP server, the CLI and the SDK's server side call
the same functions; nothing here imports FastAPI. One module per area
(`usecases/wallet.py`, `coupons.py`, …). The convention:

    # a read: typed data, or a BillfoldError from the catalogue
    def name(app: Services, *, account_id: str, <ids and options>) -> SomeOut

    # a write: the reply, run at most once per idempotency key
    def name(app: Services, *, call: Call, account_id: str, <ids>, body: SomeRequest) -> Reply

- `app` is the `Services` container; keyword arguments only. `account_id` is the agent's
  own account (operator use cases take the account they act on, where there is one, or
  find it in `body`). Ids from the path are plain arguments; a request body is passed as
  its request model (`FundRequest`, …), so the validation rules travel with it: a front end
  builds the model from its input, and a model that validated is all a use case accepts.
- A read returns a response model (`billfold.schemas.ResponseModel`): the same JSON as the
  view it is built from, typed. It opens its own read transaction.
- A write takes a `Call` (idempotency key, request fingerprint, request id) and returns an
  `application.idempotent.Reply` (status, the rendered `{"data": …}` body, headers,
  replayed). Whether it is atomic (one transaction) or phased (it calls the processor
  between transactions) is its own business; with a key it runs at most once: a retry gets
  the stored reply byte for byte (`replayed=True`), the same key with other arguments is
  refused (422 `idempotency_key_reused`), and a refusal under a key is stored and returned
  as a Reply too, so a retry gets the same refusal. Without a key a refusal is raised as
  the `BillfoldError`, which the front end renders (HTTP: `api/errors.py`).
- Agent writes keep their keys per account, operator writes in the operator's key space.
- A front end builds the `Call`: HTTP from the request (`api/deps.py`: `AgentCall`,
  `OperatorCall`; `Call()` where the route takes no Idempotency-Key); MCP or the CLI with
  `Call.of("wallet.fund", arguments, key=...)`.

Example, without HTTP:

    reply = wallet.fund(app, call=Call.of("wallet.fund", args, key="k1"),
                        account_id="acct_…", body=FundRequest.model_validate(args))
    reply.status_code, json.loads(reply.body)["data"], reply.replayed
"""

from billfold.application.idempotent import Reply
from billfold.application.usecases.base import Call

__all__ = ["Call", "Reply"]
