"""OpenAI's Batch API on the loopback server: `/v1/files` (a multipart upload of a JSONL file, its
content read back) and `/v1/batches` (create, retrieve, cancel), as the openai SDK speaks them.

A job moves one step each time it is retrieved, never by the clock, so a test polls as fast as
it likes and nothing sleeps: `validating`, then `in_progress` over `batch_polls` retrievals (a
share of the rows answered at each), then `completed` with an output file (in an order of its
own, as OpenAI's is) and an error file. `batch_failure(line)` returning a status fails that row
(its error body in the error file); `batch_expire_after=N` makes the job `expired` once N rows
were answered: the rest go to the error file as `batch_expired`, as OpenAI reports them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

from .transport import Handler

if TYPE_CHECKING:
    from .faults import Fault

Json = dict[str, Any]
ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
EXPIRED = "This request could not be executed before the completion window expired."


@dataclass
class _Job:
    id: str
    input_file_id: str
    window: str
    metadata: Json | None
    lines: list[Json]
    status: str = "validating"
    created: int = field(default_factory=lambda: int(time.time()))
    done: int = 0  # rows answered or failed so far
    output: list[Json] = field(default_factory=list)
    errors: list[Json] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    problems: list[Json] = field(default_factory=list)  # why validation failed

    def counts(self) -> Json:
        return {"total": len(self.lines), "completed": len(self.output), "failed": len(self.errors)}


class BatchAPI:
    """Mixed into OpenAIServer: the files and batches it keeps, and their routes."""

    batch_polls: int
    batch_failure: Callable[[Json], int | None] | None
    batch_expire_after: int | None

    def _init_batches(
        self,
        polls: int = 3,
        failure: Callable[[Json], int | None] | None = None,
        expire_after: int | None = None,
    ) -> None:
        self.batch_polls = polls
        self.batch_failure = failure
        self.batch_expire_after = expire_after
        self.files: dict[str, tuple[Json, bytes]] = {}
        self.batches: dict[str, _Job] = {}
        self._batch_ids = itertools.count(1)

    if TYPE_CHECKING:  # what the server it is mixed into gives
        _rng: random.Random

        def _send(self, h: Handler, status: int, obj: Any, fault: Fault | None = None) -> None: ...
        def error_body(self, status: int, message: str | None = None) -> Json: ...
        def completion(self, model: str, messages: list[Any], body: Json) -> Json: ...

        @property
        def models(self) -> list[str]: ...

    # routes

    def _batch_route(self, h: Handler, method: str, path: str, body: Json, fault: Fault | None) -> bool:
        """Serve a files or batches request; False when `path` is neither."""
        parts = path.strip("/").split("/")  # v1, files|batches, id, content|cancel
        if parts[:2] == ["v1", "files"]:
            if method == "POST" and len(parts) == 2:
                self._upload(h, fault)
            elif method == "GET" and len(parts) in (3, 4) and parts[2] in self.files:
                meta, data = self.files[parts[2]]
                if len(parts) == 4 and parts[3] == "content":
                    h.send_bytes(200, data, "application/octet-stream")
                else:
                    self._send(h, 200, meta, fault)
            else:
                self._send(h, 404, self.error_body(404, f"No such File object: {'/'.join(parts[2:])}"), fault)
            return True
        if parts[:2] == ["v1", "batches"]:
            job = self.batches.get(parts[2]) if len(parts) > 2 else None
            if method == "POST" and len(parts) == 2:
                self._create(h, body, fault)
            elif job is not None and method == "GET" and len(parts) == 3:
                self._advance(job)
                self._send(h, 200, self._batch(job), fault)
            elif job is not None and method == "POST" and parts[3:] == ["cancel"]:
                if job.status not in TERMINAL:
                    job.status = "cancelling"
                self._send(h, 200, self._batch(job), fault)
            else:
                self._send(h, 404, self.error_body(404, f"No batch found with id '{'/'.join(parts[2:])}'."), fault)
            return True
        return False

    def _upload(self, h: Handler, fault: Fault | None) -> None:
        form = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + h.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + h.raw_body
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in form.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            message = "a batch upload takes a 'file' and purpose 'batch'"
            return self._send(h, 400, self.error_body(400, message), fault)
        filename, data = fields["file"]
        meta = self._store(data, filename or "upload.jsonl", "batch")
        self._send(h, 200, meta, fault)

    def _store(self, data: bytes, filename: str, purpose: str) -> Json:
        ident = f"file-farm{next(self._batch_ids):06d}"
        meta = {
            "id": ident,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[ident] = (meta, data)
        return meta

    def _create(self, h: Handler, body: Json, fault: Fault | None) -> None:
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            return self._send(h, 404, self.error_body(404, f"No such File object: {file_id}"), fault)
        if body.get("endpoint") != ENDPOINT:
            return self._send(h, 400, self.error_body(400, f"endpoint must be {ENDPOINT}"), fault)
        job = _Job(f"batch_farm{next(self._batch_ids):06d}", file_id, str(body.get("completion_window")), body.get("metadata"), [])  # fmt: skip
        for number, raw in enumerate(self.files[file_id][1].decode().splitlines(), 1):
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or line.get("url") != ENDPOINT or "custom_id" not in line:
                    raise ValueError("each line needs a custom_id, method POST and url " + ENDPOINT)
            except ValueError as exc:
                job.problems.append({"code": "invalid_request", "message": str(exc), "line": number})
                continue
            job.lines.append(line)
        if len({line["custom_id"] for line in job.lines}) != len(job.lines):
            job.problems.append({"code": "duplicate_custom_id", "message": "custom_id values must be unique"})
        self.batches[job.id] = job
        self._send(h, 200, self._batch(job), fault)

    # the job's life, one step a retrieval

    def _advance(self, job: _Job) -> None:
        if job.status == "validating":
            job.status = "failed" if job.problems else "in_progress"
            return
        if job.status == "cancelling":
            return self._finish(job, "cancelled")
        if job.status != "in_progress":
            return
        step = max(1, math.ceil(len(job.lines) / max(1, self.batch_polls)))
        for line in job.lines[job.done : job.done + step]:
            if self.batch_expire_after is not None and job.done >= self.batch_expire_after:
                return self._finish(job, "expired")
            self._answer(job, line)
            job.done += 1
        if job.done >= len(job.lines):
            self._finish(job, "completed")

    def _answer(self, job: _Job, line: Json) -> None:
        body = line.get("body") or {}
        ident = f"batch_req_farm{next(self._batch_ids):06d}"
        status = 200
        if body.get("model") not in self.models:
            status = 404
        elif self.batch_failure is not None:
            status = self.batch_failure(line) or 200
        if status == 200:
            answer = self.completion(body["model"], body.get("messages") or [], body)
            response = {"status_code": 200, "request_id": ident, "body": answer}
            job.output.append({"id": ident, "custom_id": line["custom_id"], "response": response, "error": None})
        else:
            response = {"status_code": status, "request_id": ident, "body": self.error_body(status)}
            job.errors.append({"id": ident, "custom_id": line["custom_id"], "response": response, "error": None})

    def _finish(self, job: _Job, status: str) -> None:
        for line in job.lines[job.done :]:
            error = {"code": "batch_expired", "message": EXPIRED} if status == "expired" else None
            if error is None:
                error = {"code": "batch_cancelled", "message": "This request was cancelled with its batch."}
            ident = f"batch_req_farm{next(self._batch_ids):06d}"
            job.errors.append({"id": ident, "custom_id": line["custom_id"], "response": None, "error": error})
        job.done = len(job.lines)
        job.status = status
        output = list(job.output)
        self._rng.shuffle(output)  # OpenAI's output file is in no particular order
        if output:
            job.output_file_id = self._store(_jsonl(output), f"{job.id}_output.jsonl", "batch_output")["id"]
        if job.errors:
            job.error_file_id = self._store(_jsonl(job.errors), f"{job.id}_error.jsonl", "batch_output")["id"]

    def _batch(self, job: _Job) -> Json:
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": {"object": "list", "data": job.problems} if job.problems else None,
            "input_file_id": job.input_file_id,
            "completion_window": job.window,
            "status": job.status,
            "output_file_id": job.output_file_id,
            "error_file_id": job.error_file_id,
            "created_at": job.created,
            "expires_at": job.created + 86400,
            "request_counts": job.counts(),
            "metadata": job.metadata,
        }


def _jsonl(lines: list[Json]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
