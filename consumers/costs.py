"""What the embeddings cost: input tokens sent to Gemini, priced at the list prices.

Token counts are the estimate admission uses (UTF-8 bytes / 4, CONTRACT §11), not the
API's own count. A batch's Batch API tokens are its created jobs' `est_tokens`; its
online tokens are `batches.tokens_online` (migration 000007), added as each online
attempt is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import Counter

from consumers import metrics

if TYPE_CHECKING:
    from consumers.app import App
    from consumers.batch.inputs import Input

Path = Literal["batch", "online"]


@dataclass(frozen=True)
class Price:
    """US dollars per million input tokens."""

    batch: float
    online: float


# List prices, to be checked against https://ai.google.dev/gemini-api/docs/pricing before a
# figure is relied on: they change, and a contract price may differ. A model missing here
# has its tokens counted and no spend estimated.
PRICES: dict[str, Price] = {
    "gemini-embedding-001": Price(batch=0.075, online=0.15),
}
PRICE_NOTE = "estimated at list prices (consumers/costs.py), to be checked against the bill"

SPEND = Counter("batchyard_spend_dollars_total",
                "estimated spend on input tokens at list prices", ["path"])
ONLINE_EQUIVALENT = Counter(
    "batchyard_online_equivalent_dollars_total",
    "what the same input tokens would cost on the online API at list prices")

async def submitted(app: App, inp: Input, path: Path) -> None:
    """Count an attempt's tokens as sent on `path` (a job created, or an online call)."""
    tokens = inp.est_tokens()
    metrics.TOKENS_SUBMITTED.labels(path).inc(tokens)
    if (price := PRICES.get(inp.model)) is not None:
        SPEND.labels(path).inc(tokens * getattr(price, path) / 1e6)
        ONLINE_EQUIVALENT.inc(tokens * price.online / 1e6)
    if path == "online":  # a batch job's tokens are on its jobs row already
        await app.store.reports.add_online_tokens(inp.request.batch_id, tokens)


def priced(model: str, batch: int, online: int) -> dict[str, Any]:
    """Tokens by path and their estimated spend, against the same tokens all online."""
    out: dict[str, Any] = {"model": model, "tokens_batch": batch, "tokens_online": online,
                           "spend_usd": None, "online_usd": None, "saved_usd": None}
    if (price := PRICES.get(model)) is not None:
        spend = (batch * price.batch + online * price.online) / 1e6
        all_online = (batch + online) * price.online / 1e6
        out |= {"spend_usd": spend, "online_usd": all_online, "saved_usd": all_online - spend}
    return out


async def of_batch(app: App, batch_id: str, model: str) -> dict[str, Any]:
    """One batch's tokens by path, every attempt's, and their estimated spend."""
    rows = await app.store.reports.tokens(batch_id)
    row = rows[0] if rows else None
    out = priced(model, row["batch"] if row else 0, row["online"] if row else 0)
    del out["model"]
    return out


async def totals(app: App) -> dict[str, Any]:
    """Every model's tokens and spend, with their sum where priced."""
    rows = await app.store.reports.tokens()
    models = [priced(r["model"], r["batch"], r["online"]) for r in rows]
    known = [m for m in models if m["spend_usd"] is not None]
    return {
        "tokens_batch": sum(m["tokens_batch"] for m in models),
        "tokens_online": sum(m["tokens_online"] for m in models),
        "spend_usd": sum(m["spend_usd"] for m in known),
        "online_usd": sum(m["online_usd"] for m in known),
        "saved_usd": sum(m["saved_usd"] for m in known),
        "unpriced_models": [m["model"] for m in models if m["spend_usd"] is None],
        "models": models,
        "note": PRICE_NOTE,
    }


def summary(cost: dict[str, Any]) -> str:
    """One line for `status`."""
    line = (f"tokens submitted: {cost['tokens_batch']:,} batch, {cost['tokens_online']:,} online"
            f"   estimated spend ${cost['spend_usd']:.4f} (all online: "
            f"${cost['online_usd']:.4f}, saved ${cost['saved_usd']:.4f})")
    if cost["unpriced_models"]:
        line += f"   no list price for {', '.join(cost['unpriced_models'])}"
    return f"{line}\n{cost['note']}"


def markdown(cost: dict[str, Any]) -> list[str]:
    """The report's cost section."""
    lines = ["", "## What it cost", "", f"Tokens are estimates; dollars are {cost['note']}.", "",
             "| model | batch tokens | online tokens | spend | all online | saved |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in cost["models"]:
        usd = ["n/a" if m[k] is None else f"${m[k]:.4f}"
               for k in ("spend_usd", "online_usd", "saved_usd")]
        lines.append(f"| {m['model']} | {m['tokens_batch']} | {m['tokens_online']} | "
                     + " | ".join(usd) + " |")
    return lines
