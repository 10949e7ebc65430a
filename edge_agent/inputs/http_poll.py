"""HTTP JSON poller (the original weather-API input): one request per interval.

What a poll that fails gives (edgebot_http_polls_total{outcome} counts each, and a warning
is logged without URL query, headers or token):
- timeout, transport error, a non-2xx status, an oversize body, a missing token: no event
  (there is no telemetry in them);
- a 2xx body that is not JSON or nests too deep: one ``raw`` event with ``parse.error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import urllib.parse

import httpx

from edge_agent import metrics
from edge_agent.config_polling import HttpInputConfig
from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.inputs.polling import every
from edge_agent.parsers.http_json import MappingLimits, Response, map_response
from edge_agent.spool import Spool
from mesh.timeutil import now_ns

log = logging.getLogger(__name__)


class PollFailed(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class HttpPollInput(Input):
    def __init__(self, config: HttpInputConfig, spool: Spool, agent_id: str) -> None:
        self.config = config
        self.spool = spool
        self.name = f"http:{config.name}"
        self.source = f"{agent_id}/{self.name}"
        parts = urllib.parse.urlsplit(config.url)
        # The query string may carry an API key: it is neither logged nor stored.
        self.safe_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.url_host = parts.hostname or ""
        self._limits = MappingLimits(
            config.max_json_depth,
            config.max_events_per_poll,
            config.max_field_bytes,
            config.max_message_bytes,
        )
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout_s,
            verify=self.config.verify_tls,
            follow_redirects=False,
            trust_env=False,
        )
        self._task = asyncio.create_task(
            every(self.config.interval_s, self.poll, self.name), name=f"{self.name}-poll"
        )
        log.info("HTTP polling", extra={"input": self.name, "url": self.safe_url})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def poll(self) -> None:
        try:
            async with asyncio.timeout(self.config.timeout_s):
                status, body = await self._fetch()
        except PollFailed as failure:
            self._failed(failure.outcome, str(failure))
            return
        except TimeoutError:
            self._failed("timeout", f"no complete answer within {self.config.timeout_s} s")
            return
        except httpx.TimeoutException:
            self._failed("timeout", "timed out")
            return
        except httpx.HTTPError as error:
            self._failed("transport", f"{type(error).__name__}: {error}")
            return
        await self._commit(status, body)

    async def _fetch(self) -> tuple[int, bytes]:
        assert self._client is not None
        headers = {**self.config.headers, **self._authorization()}
        body = self.config.body.encode() if self.config.body is not None else None
        request = self._client.build_request(
            self.config.method, self.config.url, headers=headers, content=body
        )
        response = await self._client.send(request, stream=True)
        try:
            if not 200 <= response.status_code < 300:
                raise PollFailed("http_status", f"HTTP {response.status_code}")
            return response.status_code, await self._read_bounded(response)
        finally:
            await response.aclose()

    async def _read_bounded(self, response: httpx.Response) -> bytes:
        limit = self.config.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PollFailed("oversize", f"Content-Length {declared} > {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise PollFailed("oversize", f"body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _authorization(self) -> dict[str, str]:
        token = self._token()
        return {"Authorization": f"Bearer {token}"} if token is not None else {}

    def _token(self) -> str | None:
        if self.config.bearer_token_file is not None:
            try:
                token = self.config.bearer_token_file.read_text().strip()
            except OSError as error:
                raise PollFailed("token", f"cannot read the token file: {error.strerror}") from None
        elif self.config.bearer_token_env is not None:
            token = os.environ.get(self.config.bearer_token_env, "").strip()
        else:
            return None
        if not token:
            raise PollFailed("token", "the bearer token is empty")
        return token

    async def _commit(self, status: int, body: bytes) -> None:
        response = Response(
            body, status, self.safe_url, self.source, self.url_host, self.config.name, now_ns()
        )
        mapped = map_response(response, self.config.mapping, self._limits)
        if mapped.error is not None:
            self._failed(mapped.failure, mapped.error)
        else:
            metrics.HTTP_POLLS.labels(self.name, "ok").inc()
        if mapped.skipped:
            metrics.INPUT_RECORDS_SKIPPED.labels(self.name, "max_events").inc(mapped.skipped)
        metrics.MESSAGES_RECEIVED.labels(self.name).inc()
        metrics.INPUT_BYTES.labels(self.name).inc(len(body))
        await hand_to_spool(self.spool, mapped.events)

    def _failed(self, outcome: str, detail: str) -> None:
        metrics.HTTP_POLLS.labels(self.name, outcome).inc()
        log.warning("HTTP poll %s of %s failed (%s): %s", self.name, self.safe_url, outcome, detail)
