"""`farm.map(..., batch=True)`: the rows through an OpenAI-compatible Batch API, at its price.

    built rows -> JSONL (one chat completions body a line, `custom_id` row-N)
      -> POST /v1/files (purpose batch) -> POST /v1/batches -> GET /v1/batches/{id} until done
      -> the output and error files read back into the rows, in input order

The estimated cost is said before anything is sent (`batch_input`/`batch_output` in `[prices]`,
else half the regular price, marked "assumed"), and a budget it could exceed refuses the run
before the upload. The job id is kept on disk under a hash of what was asked (model, rows,
parameters), so running the cell again, after a kernel restart too, picks up the same job
instead of paying twice. Ctrl-C stops waiting, not the job: one line says how to cancel it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .batch import BatchResult, PromptBuilder, Row, rows_of
from .errors import ConfigError, FarmError
from .ledger import BudgetExceeded, batch_price
from .providers._http import status_error
from .providers.base import as_messages
from .router.call import parse_params
from .types import Attempt, ChatMessage, ChatRequest, ChatResponse, Usage

if TYPE_CHECKING:
    from .batch import Session
    from .providers.openai import OpenAIProvider

ENDPOINT: Final = "/v1/chat/completions"
DONE = frozenset({"completed", "failed", "expired", "cancelled"})
# What farm.map does between a row's request and its answer, which a Batch API job cannot.
_ROW_BY_ROW = ("schema", "tools", "tool_choice", "fallback", "no_cache", "concurrency")
_WORST_OUT = 256  # tokens an answer may take when max_tokens is not set (as the ledger holds)


def jobs_dir(session: Session) -> Path:
    found = session.settings.batch.dir
    if found:
        return Path(found).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "farm_jupyter", "batches")


def _provider(session: Session, model: str | None) -> tuple[str, OpenAIProvider]:
    route, one = session.aio.provider(model)  # a pool of servers: the job lives on its first one
    if one.kind != "openai":
        raise ConfigError(
            f"batch=True needs an OpenAI-compatible Batch API, and {route.partition(':')[0]} ({one.kind}) has none",
            hint="use an openai: model (OpenAI, or a proxy such as LiteLLM with /v1/batches), or drop batch=True",
        )
    return route, one  # type: ignore[return-value]


def _lines(
    provider: OpenAIProvider, model: str, built: Sequence[Any], system: str | None, params: dict[str, Any]
) -> list[dict[str, Any]]:
    parsed = parse_params(params)
    lines = []
    for i, prompt in enumerate(built):
        messages = as_messages(prompt)
        if system:
            messages.insert(0, ChatMessage(role="system", content=system))
        request = ChatRequest(messages=messages, model=model, params=parsed, stream=False)
        lines.append(
            {"custom_id": f"row-{i}", "method": "POST", "url": ENDPOINT, "body": provider.request_body(request)}
        )
    return lines


def job_key(address: str, url: str | None, lines: list[dict[str, Any]]) -> str:
    """What was asked, hashed: the model, where, and every row's body (its parameters included)."""
    asked = json.dumps({"address": address, "url": url, "lines": lines}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(asked.encode()).hexdigest()[:32]


def _estimate(session: Session, address: str, lines: list[dict[str, Any]]) -> tuple[float | None, str]:
    price = batch_price(session.settings, address)
    if price is None:
        return None, f"{len(lines)} rows to {address}: price unknown"
    usd = sum(
        price.cost(
            sum(len(str(m.get("content") or "")) for m in line["body"]["messages"]) // 4 + 1,
            int(line["body"].get("max_tokens") or _WORST_OUT),
        )
        for line in lines
    )
    return usd, f"{len(lines)} rows to {address}: estimated at most ${usd:.4f} ({price.note})"


def _afford(session: Session, usd: float | None, said: str) -> None:
    usage = session.usage()
    if usage.budget is not None and usd is not None and usage.spent + usd > usage.budget:
        raise BudgetExceeded(
            f"this batch ({said}) could take the spend (${usage.spent:.4f}) past the ${usage.budget:.2f} budget",
            hint="map fewer rows, set max_tokens, or raise [budget] usd in farm.toml",
        )


def run_batch(
    session: Session,
    items: Iterable[Any],
    prompt: PromptBuilder = "{}",
    *,
    model: str | None = None,
    system: str | None = None,
    progress: bool = True,
    poll: float | None = None,
    **params: Any,
) -> Any:
    """`farm.map(..., batch=True)`: the rows as one Batch API job; see the module docstring."""
    refused = [name for name in _ROW_BY_ROW if name in params]
    if refused:
        named = ", ".join(f"{name}=" for name in refused)
        raise ConfigError(
            f"batch=True cannot take {named}: a batch job answers each row once on the server, with no "
            "validation and re-ask, tool call, fallback, cache or concurrency of ours in between",
            hint=f"drop batch=True to ask row by row, or drop {named}",
        )
    values, built, labels = rows_of(session, items, prompt, model)
    address, provider = _provider(session, model)
    lines = _lines(provider, address.split(":", 1)[1], built, system, params)
    key = job_key(address, provider.url, lines)
    path = jobs_dir(session) / f"{key}.json"
    client = provider.client
    run = session.aio.runtime.run
    job = json.loads(path.read_text()) if path.exists() else None
    if job is not None and not _known(session, provider, job["id"]):
        print(f"farm.map batch: job {job['id']} (kept in {path}) is unknown to {provider.url}: submitting anew")
        job = None
    if job is not None:
        print(f"farm.map batch: resuming job {job['id']} ({len(lines)} rows to {address}, kept in {path})")
    else:
        usd, said = _estimate(session, address, lines)
        print(f"farm.map batch: {said}")
        _afford(session, usd, said)
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()

        async def submit() -> Any:
            async with provider.mapped_errors():
                uploaded = await client.files.create(file=(f"farm-{key}.jsonl", data), purpose="batch")
                return await client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint=ENDPOINT,
                    completion_window=session.settings.batch.window,  # type: ignore[arg-type]
                    metadata={"farm_jupyter": key},
                )

        created = run(submit())
        job = {"id": created.id, "address": address, "rows": len(lines), "key": key, "created": created.created_at}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job))
    batch = _wait(
        session, provider, job["id"], len(lines), progress, session.settings.batch.poll if poll is None else poll
    )
    rows, usages = _read(session, provider, batch, address, values)
    if not job.get("accounted"):  # a rerun reads the same finished job: its spend counts once
        session.aio.account_batch(address, usages)
        job["accounted"] = True
        path.write_text(json.dumps(job))
    result = BatchResult(rows, labels)
    result.meta = {"batch": {"id": batch.id, "status": batch.status, "key": key, "file": str(path)}}
    session.last_batch = result.to_pandas() if _has_pandas() else result
    return session.last_batch  # the very object: `farm.session().last_batch is rows`


def _known(session: Session, provider: OpenAIProvider, ident: str) -> bool:
    """Does the server still have this job? A 404 (another server, or one that forgot it) is no."""
    from .errors import ModelNotFound

    async def retrieve() -> Any:
        async with provider.mapped_errors():
            return await provider.client.batches.retrieve(ident)

    try:
        session.aio.runtime.run(retrieve())
    except ModelNotFound:  # a 404, mapped at the boundary
        return False
    return True


def _wait(session: Session, provider: OpenAIProvider, ident: str, total: int, progress: bool, poll: float) -> Any:
    """Poll the job until it is over, moving the bar; Ctrl-C leaves the job running and says how
    to cancel it."""
    from tqdm.auto import tqdm

    async def retrieve() -> Any:
        async with provider.mapped_errors():
            return await provider.client.batches.retrieve(ident)

    with tqdm(total=total, desc=f"farm.map batch {ident}", unit="row", disable=not progress, leave=True) as bar:
        try:
            while True:
                batch = session.aio.runtime.run(retrieve())
                counts = batch.request_counts
                finished = (counts.completed + counts.failed) if counts else 0
                bar.update(max(0, finished - bar.n))
                bar.set_postfix(status=batch.status, failed=counts.failed if counts else 0, refresh=False)
                if batch.status in DONE:
                    return batch
                time.sleep(poll)
        except KeyboardInterrupt:
            print(
                f"farm.map batch: job {ident} keeps running on the server; run the cell again to collect it, "
                f"or farm.cancel_batch({ident!r}) to cancel it",
                file=sys.stderr,
            )
            raise


def _read(
    session: Session, provider: OpenAIProvider, batch: Any, address: str, values: list[Any]
) -> tuple[list[Row], list[Usage]]:
    """The output and error files into one row per input, in input order, and the answered rows' usage."""

    async def content(file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        async with provider.mapped_errors():
            found = await provider.client.files.content(file_id)
        return [json.loads(line) for line in found.text.splitlines() if line.strip()]

    lines = session.aio.runtime.run(content(batch.output_file_id)) + session.aio.runtime.run(
        content(batch.error_file_id)
    )
    by_row = {str(line.get("custom_id")): line for line in lines}
    provider_name, model = address.split(":", 1)
    rows, usages = [], []
    for i, item in enumerate(values):
        line = by_row.get(f"row-{i}")
        if line is None:
            why = "; ".join(e.message or e.code or "" for e in batch.errors.data) if batch.errors else ""
            said = f"batch job {batch.id} ended {batch.status} without an answer for this row" + (
                f": {why}" if why else ""
            )
            rows.append(Row(i, item, error=said, error_type=f"Batch{batch.status.title()}"))
            continue
        response, error = line.get("response"), line.get("error")
        if error:
            message = f"batch job {batch.id}: {error.get('message') or error.get('code')}"
            rows.append(Row(i, item, error=message, error_type=str(error.get("code") or "BatchError")))
        elif response and response.get("status_code") == 200:
            answer = _response(response["body"], provider_name, model)
            rows.append(Row.answered(i, item, answer))
            usages.append(answer.usage)
        else:
            status = int((response or {}).get("status_code") or 500)
            detail = ((response or {}).get("body") or {}).get("error", {}).get("message", "")
            exc: FarmError = status_error(
                provider_name, status, detail, url=provider.url or "", label=f"{provider_name} batch"
            )
            rows.append(Row.failed(i, item, exc, 0.0))
    return rows, usages


def _response(body: dict[str, Any], provider: str, model: str) -> ChatResponse:
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = body.get("usage") or {}
    return ChatResponse(
        text=message.get("content") or "",
        provider=provider,
        model=model,
        usage=Usage(
            prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0
        ),
        finish_reason=choice.get("finish_reason"),
        attempts=[Attempt(provider=provider, model=model, ok=True)],
    )


def cancel(session: Session, ident: str, model: str | None = None) -> str:
    """Cancel a batch job by id (the provider is the one its kept record names, else `model`'s)."""
    for found in jobs_dir(session).glob("*.json") if jobs_dir(session).is_dir() else ():
        job = json.loads(found.read_text())
        if job.get("id") == ident:
            model = model or job.get("address")
            found.unlink()  # a cancelled job is not resumed: running the cell again submits anew
    _, provider = _provider(session, model)

    async def stop() -> Any:
        async with provider.mapped_errors():
            return await provider.client.batches.cancel(ident)

    return str(session.aio.runtime.run(stop()).status)


def _has_pandas() -> bool:
    import importlib.util

    return importlib.util.find_spec("pandas") is not None
