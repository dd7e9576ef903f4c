"""``flashstock demo``: a flash sale on a cluster of its own.

It starts a local cluster (etcd, Redis and three nodes on one SQLite ledger,
as ``flashstock cluster up`` does) in a temporary folder. A crowd of buyers
(some sending their request again with the same request id) goes through
the typed async client, which finds the nodes in etcd, at one hot SKU.
Half-way through, the node that owns the SKU's shard is drained: its shards,
and their duties, move to the other nodes mid-sale. At the end the demo
checks the promises: units handed out equal the stock, never more; no user
above the limit; every retry of a request that took effect got its first
answer; the drained node owns nothing. Then it reconciles Redis against the
ledger (the same check as ``flashstock reconcile``): any difference fails the
demo.

The cluster runs the live board (``flashstock board``) too: its address is
printed before the sale (``start_in_s`` gives a person time to open it) and
it stays up for the sale (and ``linger_s`` after). Once the ledger holds the
sale's figures of every second, the demo writes the sale's review
(``flashstock sales review``) and prints its path. Everything it starts is
stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flashstock.client import AsyncAdminClient, AsyncStockClient, ClientConfig, DeductResult, Mode, Outcome
from flashstock.lockmgr import drain, etcd_client, read_view, shard_of
from flashstock.server.cli.reconcile import run_reconcile
from flashstock.server.cli.shards import map_table
from flashstock.server.ledger import create_engine
from flashstock.server.ledger.review import read_sale, review, write_review
from flashstock.server.local.cluster import LocalCluster
from flashstock.server.store.redis import masked_url

SKU = "demo-hot-sku"


@dataclass(frozen=True)
class DemoPlan:
    """The crowd of the demo sale."""

    buyers: int = 20_000
    """Buyers, each one attempt (plus a retry for some)."""
    users: int = 5_000
    """Distinct users among the buyers."""
    stock: int = 1_000
    """Units on sale."""
    limit: int = 2
    """Per-user limit."""
    retry_share: float = 0.1
    """Share of buyers who send their request again, with the same request id."""
    concurrency: int = 200
    """Buyers in flight at once."""
    nodes: int = 3
    """Nodes of the local cluster."""
    drain: bool = True
    """Drain the node owning the SKU's shard half-way through (with more than one node)."""
    workers: int = 1
    """Worker processes per node."""
    seed: int = 7
    """Random seed of the crowd."""
    mode: str = "fast"
    """The SKU's mode: 'fast', or 'durable' (each reply waits until the ledger holds it)."""
    board: bool = True
    """Run the live board beside the cluster and print its address."""
    start_in_s: float = 0.0
    """Seconds between the board's address being printed and the sale's start."""
    linger_s: float = 0.0
    """Seconds the cluster and its board stay up after the sale."""
    rate: float = 0.0
    """Buyers sent per second at most until the SKU sells out (0 = as fast as the nodes answer)."""
    review_dir: str = "flashstock-demo-review"
    """Where the sale's review is written ('' = no review)."""
    tls: bool = False
    """Run the cluster on TLS (``LocalCluster(tls=True)``): the buyers and the operator call with certificates."""
    unit_price_minor: int = 1999
    """The demo SKU's price in minor units (its goals: every unit, sold out in 30 s, 400 buyers)."""
    auth: bool = False
    """Run the nodes with auth on: the admin calls carry an operator's bearer token, the buyers' a buyer's."""


DEMO_ISSUER, DEMO_AUDIENCE = "flashstock-demo", "flashstock"
"""What the demo's nodes require of a token, and its tokens say."""


def _auth_args(plan: DemoPlan, folder: Path) -> tuple[str, ...]:
    """With ``plan.auth``: an HS256 secret written into ``folder`` and the nodes' flags for it; else none."""
    if not plan.auth:
        return ()
    import secrets

    (folder / "jwt.secret").write_text(secrets.token_hex(32) + "\n")
    (folder / "jwt.secret").chmod(0o600)
    return (
        *("--auth", "on", "--auth-jwt-keys", str(folder / "jwt.secret")),
        *("--auth-jwt-issuer", DEMO_ISSUER, "--auth-jwt-audience", DEMO_AUDIENCE),
    )


def _demo_token(folder: Path, sub: str, role: str) -> str:
    """A bearer token of ``role`` for an hour, signed with the secret :func:`_auth_args` wrote."""
    import jwt

    now = int(time.time())
    claims = {"sub": sub, "roles": [role], "iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, (folder / "jwt.secret").read_text().strip().encode(), algorithm="HS256")


@dataclass
class SaleLog:
    """What the buyers saw."""

    outcomes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    sold_by_user: Counter = field(default_factory=Counter)
    retries: int = 0
    retry_mismatches: list[str] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    @property
    def attempts(self) -> int:
        """Every Deduct the crowd sent (retries included), answered or failed."""
        return sum(self.outcomes.values()) + sum(self.errors.values())

    def record(self, result: DeductResult, seconds: float) -> None:
        self.outcomes[result.outcome.name] += 1
        self.latencies.append(seconds)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _buyer(stock: AsyncStockClient, log: SaleLog, user: str, qty: int, retries: bool) -> None:
    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    try:
        first = await stock.deduct(SKU, user, qty, request_id=request_id)
    except Exception as exc:  # noqa: BLE001 - counted and shown
        log.errors[type(exc).__name__] += 1
        return
    log.record(first, time.perf_counter() - started)
    if first.outcome is Outcome.OK:
        log.sold_by_user[user] += qty
    if not retries:
        return
    log.retries += 1
    started = time.perf_counter()
    again = await stock.deduct(SKU, user, qty, request_id=request_id, retry=True)
    log.record(again, time.perf_counter() - started)
    if first.outcome is Outcome.OK:
        if again.outcome is not Outcome.DUPLICATE or again.deduction != first.deduction:
            log.retry_mismatches.append(f"{request_id}: first OK, retry {again.outcome.name}")
    elif again.outcome is Outcome.OK:
        # A refusal took no effect, so its retry is a fresh attempt.
        log.sold_by_user[user] += qty


@dataclass
class Drain:
    """The half-way drain: which node, when, and what the map showed after."""

    node: str = ""
    """The drained node ('' = none)."""
    at_sold: int = 0
    """Units sold when it was drained."""
    shard_owner_after: str = ""
    """The owner of the SKU's shard after the drain."""


async def _owner_of_shard(cluster: LocalCluster, shard: int) -> str:
    client = etcd_client(cluster.etcd_endpoint, access=cluster.etcd_access())
    try:
        view = await read_view(client, cluster.cluster)
        return view.owners[shard].node if shard in view.owners else ""
    finally:
        await client.close()


async def _drain(cluster: LocalCluster, node: str) -> None:
    client = etcd_client(cluster.etcd_endpoint, access=cluster.etcd_access())
    try:
        await drain(client, cluster.cluster, node)
    finally:
        await client.close()


def client_config(cluster: LocalCluster, plan: DemoPlan) -> ClientConfig:
    """The buyers' and the operator's client settings: the cluster's nodes found in its etcd.

    With ``plan.tls`` they are the operator's (its certificate and etcd user,
    :meth:`LocalCluster.operator_config`). With ``plan.auth`` the operator's
    and the buyers' clients add a bearer token each to these (:func:`_sale`).
    """
    return cluster.operator_config(connections_per_address=max(2, 2 * plan.workers))


async def _sale(plan: DemoPlan, cluster: LocalCluster, console: Console, drained: Drain) -> tuple[SaleLog, float, dict]:
    rng = random.Random(plan.seed)
    config = client_config(cluster, plan)
    admin_config = stock_config = config
    if plan.auth:
        admin_config = replace(config, token=_demo_token(cluster.folder, "demo-operator", "operator"))
        stock_config = replace(config, token=_demo_token(cluster.folder, "demo-gateway", "buyer"))
    log = SaleLog()
    async with AsyncAdminClient(admin_config) as admin, AsyncStockClient(stock_config) as stock:
        mode = Mode.DURABLE if plan.mode == "durable" else Mode.FAST
        defined = (
            await admin.put_sku(
                SKU,
                plan.stock,
                per_user_limit=plan.limit,
                mode=mode,
                goal_units=plan.stock,
                goal_sellout_ms=30_000,
                goal_buyers=min(plan.users, max(1, plan.stock // (2 * plan.limit))),
                unit_price_minor=plan.unit_price_minor,
                currency="EUR",
            )
        ).sku
        crowd = [
            (f"user-{rng.randrange(plan.users)}", 2 if rng.random() < 0.2 else 1, rng.random() < plan.retry_share)
            for _ in range(plan.buyers)
        ]
        queue: asyncio.Queue = asyncio.Queue()
        for buyer in crowd:
            queue.put_nowait(buyer)
        progress = Progress(
            TextColumn("[bold]sale"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sold {task.fields[sold]}/{task.fields[stock]}"),
            TimeElapsedColumn(),
            console=console,
        )
        task = progress.add_task("sale", total=plan.buyers, sold=0, stock=plan.stock)
        started = time.perf_counter()

        if plan.drain and plan.nodes > 1:
            drained.node = await _owner_of_shard(cluster, shard_of(SKU, cluster.shards))

        sent = 0

        async def worker() -> None:
            nonlocal sent
            while not queue.empty():
                user, qty, retries = queue.get_nowait()
                if plan.rate > 0 and sum(log.sold_by_user.values()) < plan.stock:
                    # Paced until sold out (so a person can watch the stock fall on the board): buyer i
                    # goes at started + i / rate; the rest of the crowd, all refused, goes unpaced.
                    sent += 1
                    await asyncio.sleep(max(0.0, started + sent / plan.rate - time.perf_counter()))
                sold = sum(log.sold_by_user.values())
                if drained.node and not drained.at_sold and sold >= plan.stock // 2:
                    drained.at_sold = sold
                    progress.console.print(
                        f"half-way ({sold:,} sold): draining {drained.node}, the owner of the SKU's shard"
                    )
                    await _drain(cluster, drained.node)
                await _buyer(stock, log, user, qty, retries)
                progress.update(task, advance=1, sold=sum(log.sold_by_user.values()))

        with progress:
            await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
        elapsed = time.perf_counter() - started
        level = await stock.get_stock(SKU)
    return (
        log,
        elapsed,
        {
            "total": level.total,
            "held": level.held,
            "confirmed": level.confirmed,
            "available": level.available,
            "mode": defined.mode.name.lower(),
        },
    )


def report(
    plan: DemoPlan, log: SaleLog, elapsed: float, level: dict, console: Console, drained: Drain | None = None
) -> bool:
    """Print the sale's figures and checks; True when every check holds."""
    attempts = sum(log.outcomes.values())
    sold = sum(log.sold_by_user.values())
    handed_out = level["held"] + level["confirmed"]
    over_limit = [u for u, n in log.sold_by_user.items() if n > plan.limit]

    figures = Table("figure", "value", title="flash sale")
    figures.add_row("SKU mode (as the node has it)", level.get("mode", plan.mode))
    figures.add_row("buyers / distinct users", f"{plan.buyers:,} / {plan.users:,}")
    figures.add_row("attempts (retries included)", f"{attempts:,} ({log.retries:,} retries)")
    figures.add_row("units sold (OK answers)", f"{sold:,} of {plan.stock:,}")
    for name, count in sorted(log.outcomes.items(), key=lambda kv: -kv[1]):
        figures.add_row(f"  outcome {name}", f"{count:,}")
    for name, count in log.errors.items():
        figures.add_row(f"  error {name}", f"{count:,}")
    figures.add_row("throughput", f"{attempts / elapsed:,.0f} attempts/s over {elapsed:.2f} s")
    figures.add_row(
        "latency p50 / p99",
        f"{_percentile(log.latencies, 0.5) * 1000:.2f} ms / {_percentile(log.latencies, 0.99) * 1000:.2f} ms",
    )
    console.print(figures)

    checks = [
        (f"units handed out in Redis == stock ({handed_out:,} == {plan.stock:,})", handed_out == plan.stock),
        (f"units answered OK == units handed out ({sold:,} == {handed_out:,})", sold == handed_out),
        (f"no user above the limit of {plan.limit} ({len(over_limit)} above)", not over_limit),
        (f"every retry got its first answer ({len(log.retry_mismatches)} did not)", not log.retry_mismatches),
        (f"no errors ({sum(log.errors.values())})", not log.errors),
    ]
    if drained is not None and drained.node:
        moved = drained.shard_owner_after not in ("", drained.node)
        checks.append(
            (f"the drained {drained.node} gave the SKU's shard up (now {drained.shard_owner_after or 'nobody'})", moved)
        )
    table = Table("oversell check", "result", title="promises")
    for text, ok in checks:
        table.add_row(text, "[green]PASS" if ok else "[red]FAIL")
    console.print(table)
    for line in log.retry_mismatches[:5]:
        console.print(f"[red]{line}")
    return all(ok for _, ok in checks)


def run_demo(plan: DemoPlan, console: Console) -> int:
    """Run the demo sale; the exit code is 0 when every check holds."""
    drained = Drain()
    try:
        console.print(f"[bold]flashstock demo[/]: starting etcd, Redis and {plan.nodes} node(s) on loopback ...")
        with (
            tempfile.TemporaryDirectory(prefix="flashstock-demo-") as folder,
            LocalCluster(
                Path(folder),
                nodes=plan.nodes,
                workers=plan.workers,
                extra_node_args=("--grace-s", "1", *_auth_args(plan, Path(folder))),
                board=plan.board,
                tls=plan.tls,
            ) as cluster,
        ):
            console.print(
                f"etcd on {cluster.etcd_endpoint}, Redis on {masked_url(cluster.redis_url)}, "
                f"nodes on {', '.join(cluster.node_addresses)} ({plan.workers} worker(s) each)"
            )
            console.print(
                f"SKU {SKU!r} ({plan.mode} mode): {plan.stock:,} units, limit {plan.limit} per user; "
                f"{plan.buyers:,} buyers from {plan.users:,} users, {plan.retry_share:.0%} retrying"
            )
            if plan.auth:
                console.print("auth on: the admin calls carry an operator's bearer token, the buyers' a buyer's")
            if cluster.board_url:
                board = cluster.board_url
                if plan.auth:  # a viewer's token, which the board turns into a cookie
                    board += f"?token={_demo_token(cluster.folder, 'demo-viewer', 'viewer')}"
                console.print(f"[bold]the live board of the sale: {board}[/]", soft_wrap=True, highlight=False)
            if plan.start_in_s > 0:
                console.print(f"the sale starts in {plan.start_in_s:g} s")
                time.sleep(plan.start_in_s)
            log, elapsed, level = asyncio.run(_sale(plan, cluster, console, drained))
            if drained.node:
                drained.shard_owner_after = asyncio.run(_settled_owner(cluster, drained.node))
                console.print(asyncio.run(_map(cluster)))
            ok = report(plan, log, elapsed, level, console, drained)
            # The nodes still run: the persisters drain the last log entries
            # into the ledger, which reconcile waits for.
            reconciled = (
                run_reconcile(
                    cluster.redis_url, cluster.ledger_url, cluster.shards, console, redis_tls=cluster.redis_tls()
                )
                == 0
            )
            if plan.review_dir:
                recorded = _figures_recorded(cluster.ledger_url, log.attempts)
                ok = report_figures(recorded, log.attempts, console) and ok
                console.print(
                    f"the sale's review: {_write_review(cluster.ledger_url, Path(plan.review_dir).resolve())}"
                )
            if plan.linger_s > 0:
                console.print(f"the cluster and its board stay up {plan.linger_s:g} s more (Ctrl-C ends it)")
                time.sleep(plan.linger_s)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the demo started is stopped")
        return 130
    if not reconciled:
        console.print("[red]Redis and the ledger disagree")
    console.print("[green]all promises held" if ok and reconciled else "[red]a promise was broken")
    return 0 if ok and reconciled else 1


def _figures_recorded(ledger_url: str, attempts: int, timeout: float = 30.0) -> int:
    """The attempts the ledger's per-second figures of the sale count, once they reach ``attempts``
    (the duties move a second to the ledger a few seconds after it ends) or after ``timeout``."""
    engine = create_engine(ledger_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            records = read_sale(engine, SKU)
            recorded = sum(s["attempts"] for s in records.seconds) if records else 0
            if recorded >= attempts or time.monotonic() > deadline:
                return recorded
            time.sleep(0.5)
    finally:
        engine.dispose()


def _write_review(ledger_url: str, folder: Path) -> Path:
    engine = create_engine(ledger_url)
    try:
        records = read_sale(engine, SKU)
    finally:
        engine.dispose()
    if records is None:
        raise RuntimeError(f"the ledger has no SKU {SKU!r}: the persister never wrote its put")
    return write_review(review(records), folder)


def report_figures(recorded: int, attempts: int, console: Console) -> bool:
    """Print whether the ledger's per-second figures count every attempt; True when they do."""
    ok = recorded == attempts
    mark = "[green]PASS" if ok else "[red]FAIL"
    console.print(f"the ledger's per-second figures count every attempt ({recorded:,} == {attempts:,}): {mark}")
    return ok


async def _settled_owner(cluster: LocalCluster, drained: str, timeout: float = 15.0) -> str:
    """The owner of the SKU's shard once the drained node has given it up (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    shard = shard_of(SKU, cluster.shards)
    owner = await _owner_of_shard(cluster, shard)
    while owner in ("", drained) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        owner = await _owner_of_shard(cluster, shard)
    return owner


async def _map(cluster: LocalCluster) -> Table:
    client = etcd_client(cluster.etcd_endpoint, access=cluster.etcd_access())
    try:
        return map_table(await read_view(client, cluster.cluster))
    finally:
        await client.close()
