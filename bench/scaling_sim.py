"""Simulation of Billfold on N Citus shards: a model, not a benchmark (no database).

Each shard is one PostgreSQL node, modelled as a FIFO server whose capacity is the
pgbench tpcb-like throughput measured in docs/BENCHMARKS.md. Every operation costs a
number of "tpcb-equivalents" on the shard that holds its account. An operation that
issues an invoice (a card funding, a renewal) then also holds the one global invoice
number series for `--seq-hold-ms`: a second FIFO server shared by all shards. A fan-out
operation (an operator listing) costs work on every shard and ends when the slowest
shard answers. Clients run a closed loop with no think time, so every run measures
saturation throughput.

Which inputs are measured and which are estimates is printed with the results; see
docs/SCALING.md for where each figure comes from.

    .venv/bin/python bench/scaling_sim.py
    .venv/bin/python bench/scaling_sim.py --shards 1,4,16 --invoices-per-shard 100 --seq-hold-ms 8
"""

from __future__ import annotations

import argparse
import heapq
import random
from dataclasses import dataclass

# Measured, docs/BENCHMARKS.md: pgbench -b tpcb-like, scale 10, 8 clients, 2 vCPU VM,
# PostgreSQL 15 with stock settings (fsync on, synchronous_commit on).
PGBENCH_TPS = 4157.3
# Measured, docs/BENCHMARKS.md: pgbench tpcb-like at 1 client, average latency (ms):
# one small write transaction with its commit fsync.
COMMIT_MS = 0.93
# Measured, docs/BENCHMARKS.md ("Usage charges under wrk"): API CPU per usage charge (ms)
# with the fast lane, the event-loop committer and the pipelined writer (measured at
# 7b08a70; 0.9 at aa1529c, 3.7 before issue 13).
API_CPU_MS_PER_CHARGE = 0.43


@dataclass(frozen=True)
class Model:
    node_tps: float  # tpcb-equivalents per second one shard can do
    charge_cost: float  # tpcb-equivalents per usage charge (estimate)
    invoice_cost: float  # tpcb-equivalents per invoice-issuing operation (estimate)
    fanout_cost: float  # tpcb-equivalents per shard for one fan-out operation (estimate)
    seq_hold_s: float  # how long one invoice holds the number series (estimate)
    invoices_per_shard: float  # invoices offered per second per shard (assumption)
    fanout_share: float  # share of the charge clients' operations that fan out (assumption)


@dataclass
class Result:
    shards: int
    charges_per_s: float
    invoices_offered_per_s: float
    invoices_per_s: float
    invoice_wait_p50_ms: float  # from the request to its number
    invoice_wait_p99_ms: float
    shard_busy: float  # mean utilisation of the shards
    seq_busy: float  # utilisation of the invoice number series


class _Server:
    """A FIFO server; arrivals must be offered in time order."""

    def __init__(self, window: tuple[float, float]) -> None:
        self.free_at = 0.0
        self.busy = 0.0
        self.window = window

    def serve(self, at: float, service: float) -> float:
        start = max(at, self.free_at)
        self.free_at = start + service
        low, high = self.window
        self.busy += max(0.0, min(self.free_at, high) - max(start, low))
        return self.free_at


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def simulate(
    model: Model, shards: int, *, clients_per_shard: int, seconds: float, seed: int
) -> Result:
    """Usage-charge clients in a closed loop (they saturate the shards) beside invoices
    arriving at random (Poisson) at `invoices_per_shard` per shard, each numbered by the
    one series after its shard's work."""
    rng = random.Random(seed)
    window = (seconds * 0.2, seconds)
    nodes = [_Server(window) for _ in range(shards)]
    series = _Server(window)
    charges = 0
    invoices = 0
    waits: list[float] = []
    events: list[tuple[float, int, str, int, float]] = []  # time, tiebreak, what, client, t0
    tick = 0

    def push(at: float, what: str, client: int = -1, began: float = 0.0) -> None:
        nonlocal tick
        tick += 1
        heapq.heappush(events, (at, tick, what, client, began))

    def counted(at: float) -> bool:
        return window[0] <= at < window[1]

    for client in range(shards * clients_per_shard):
        push(rng.random() * 1e-4, "charge", client)
    offered = model.invoices_per_shard * shards
    if offered > 0:
        push(rng.expovariate(offered), "invoice")
    while events:
        now, _, what, client, began = heapq.heappop(events)
        if now >= seconds:
            break
        if what == "charge":
            if rng.random() < model.fanout_share:
                service = model.fanout_cost / model.node_tps
                done = max(node.serve(now, service) for node in nodes)
            else:
                node = nodes[rng.randrange(shards)]
                done = node.serve(now, model.charge_cost / model.node_tps)
            push(done, "charged", client)
        elif what == "charged":
            charges += counted(now)
            push(now, "charge", client)
        elif what == "invoice":
            push(now + rng.expovariate(offered), "invoice")
            node = nodes[rng.randrange(shards)]
            push(node.serve(now, model.invoice_cost / model.node_tps), "number", began=now)
        elif what == "number":
            push(series.serve(now, model.seq_hold_s), "numbered", began=began)
        elif what == "numbered" and counted(now):
            invoices += 1
            waits.append(now - began)
    span = window[1] - window[0]
    return Result(
        shards=shards,
        charges_per_s=charges / span,
        invoices_offered_per_s=offered,
        invoices_per_s=invoices / span,
        invoice_wait_p50_ms=_percentile(waits, 0.50) * 1000,
        invoice_wait_p99_ms=_percentile(waits, 0.99) * 1000,
        shard_busy=sum(node.busy for node in nodes) / (shards * span),
        seq_busy=series.busy / span,
    )


def hot_wallet_ceiling(batch: int, node_tps: float, charge_cost: float) -> float:
    """Charges/s on one wallet when its row lock is held once per batch of `batch` charges:
    one commit plus each charge's work, all under the lock (an estimate: see SCALING.md)."""
    hold_s = COMMIT_MS / 1000 + batch * charge_cost / node_tps
    return min(batch / hold_s, node_tps / charge_cost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="1,2,4,8,16,32,64")
    parser.add_argument("--node-tps", type=float, default=PGBENCH_TPS)
    parser.add_argument("--charge-cost", type=float, default=1.0)
    parser.add_argument("--invoice-cost", type=float, default=4.0)
    parser.add_argument("--fanout-cost", type=float, default=2.0)
    parser.add_argument("--seq-hold-ms", type=float, default=3.0)
    parser.add_argument("--invoices-per-shard", type=float, default=40.0)
    parser.add_argument("--fanout-share", type=float, default=0.0)
    parser.add_argument("--clients-per-shard", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="simulated time per run")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    shard_counts = [int(n) for n in args.shards.split(",") if n]
    model = Model(
        node_tps=args.node_tps,
        charge_cost=args.charge_cost,
        invoice_cost=args.invoice_cost,
        fanout_cost=args.fanout_cost,
        seq_hold_s=args.seq_hold_ms / 1000,
        invoices_per_shard=args.invoices_per_shard,
        fanout_share=args.fanout_share,
    )
    print("Inputs")
    print(f"  shard capacity      {model.node_tps:,.0f} tpcb-like tx/s (measured, BENCHMARKS.md)")
    print(f"  usage charge        {model.charge_cost:g} tpcb-like tx (estimate)")
    print(f"  invoice operation   {model.invoice_cost:g} tpcb-like tx on its shard (estimate)")
    print(f"  series hold         {args.seq_hold_ms:g} ms per invoice (estimate)")
    print(f"  series ceiling      {1 / model.seq_hold_s:,.0f} invoices/s (1 / hold)")
    print(f"  invoices offered    {model.invoices_per_shard:g}/s per shard (assumption)")
    print(f"  fan-out share       {model.fanout_share:g} of charge clients' ops (assumption)")
    print(f"  simulated           {args.seconds:g} s per row, the first 20 % discarded")
    print()
    print(
        "| Shards | Usage charges/s | Invoices offered/s | Invoices numbered/s "
        "| Invoice wait p50 ms | p99 ms | Shard busy | Series busy | API cores |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for shards in shard_counts:
        r = simulate(
            model,
            shards,
            clients_per_shard=args.clients_per_shard,
            seconds=args.seconds,
            seed=args.seed,
        )
        cores = r.charges_per_s * API_CPU_MS_PER_CHARGE / 1000
        print(
            f"| {shards} | {r.charges_per_s:,.0f} | {r.invoices_offered_per_s:,.0f} "
            f"| {r.invoices_per_s:,.0f} | {r.invoice_wait_p50_ms:,.1f} "
            f"| {r.invoice_wait_p99_ms:,.1f} | {r.shard_busy:.0%} | {r.seq_busy:.0%} "
            f"| {cores:,.0f} |"
        )
    print()
    print("Hot wallet: one account's charges, its row lock held once per batch (estimate)")
    print()
    print("| Charges per batch | Charges/s on one wallet |")
    print("|--:|--:|")
    for batch in (1, 8, 64, 512):
        ceiling = hot_wallet_ceiling(batch, model.node_tps, model.charge_cost)
        print(f"| {batch} | {ceiling:,.0f} |")


if __name__ == "__main__":
    main()
