"""`predictflow publish`: send requests with the client, print replies as JSON lines."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TextIO

from pydantic import ValidationError

from consumers.client import ChurnClient
from predictflow.contract import ChurnRequest, ChurnResult, ChurnScore
from predictflow.settings import Settings


def _line(correlation_id: str, reply: ChurnResult) -> str:
    return json.dumps(
        {"correlation_id": correlation_id, **reply.model_dump(mode="json")}
    )


async def one(
    bootstrap: str,
    settings: Settings,
    customer_id: str,
    wait: bool,
    reply_timeout: float,
) -> int:
    """Publish one request; print its reply (--wait) or its correlation id."""
    request = ChurnRequest(customer_id=customer_id)
    async with ChurnClient(bootstrap, settings=settings.kafka) as client:
        if not wait:
            cid = await client.send(request)
            sys.stdout.write(json.dumps({"correlation_id": cid, "sent": True}) + "\n")
            return 0
        try:
            reply = await client.request(request, reply_timeout=reply_timeout)
        except TimeoutError:
            sys.stderr.write(f"no reply within {reply_timeout:.0f}s\n")
            return 1
        sys.stdout.write(json.dumps(reply.model_dump(mode="json")) + "\n")
        return 0 if isinstance(reply, ChurnScore) else 2


def read_requests(source: TextIO) -> tuple[list[ChurnRequest], int]:
    """The valid requests of a JSON-lines stream, and how many lines were not."""
    requests, bad = [], 0
    for number, text in enumerate(source, start=1):
        if not text.strip():
            continue
        try:
            requests.append(ChurnRequest.model_validate_json(text))
        except ValidationError as exc:
            bad += 1
            sys.stderr.write(f"line {number}: not a ChurnRequest: {exc.errors()}\n")
    return requests, bad


async def many(
    bootstrap: str,
    settings: Settings,
    requests: list[ChurnRequest],
    reply_timeout: float,
) -> int:
    """Publish requests; print replies as they arrive; 1 if any is missing."""
    async with ChurnClient(bootstrap, settings=settings.kafka, stream=True) as client:
        sent = set(await asyncio.gather(*(client.send(r) for r in requests)))
        deadline = time.monotonic() + reply_timeout
        stream = client.replies()
        while sent:
            remaining = deadline - time.monotonic()
            try:
                cid, reply = await asyncio.wait_for(anext(stream), max(remaining, 0))
            except TimeoutError:
                break
            if cid in sent:
                sent.discard(cid)
                sys.stdout.write(_line(cid, reply) + "\n")
                sys.stdout.flush()
    for cid in sorted(sent):
        sys.stderr.write(f"no reply for {cid} within {reply_timeout:.0f}s\n")
    return 1 if sent else 0
