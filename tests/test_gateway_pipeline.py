"""The pipeline against small in-test backends, for upstream behaviours the fake upstream cannot script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from coordinator.backends.base import Backend, UpstreamRequest, UpstreamResponse
from coordinator.config import BackendConfig, FleetConfig
from coordinator.gateway.accounting import Ledger, Who, price_for
from coordinator.clock import ManualClock
from coordinator.gateway.context_cache import WarmupBarrier
from coordinator.gateway.dedup import Flight
from coordinator.gateway.dialects import ANTHROPIC
from coordinator.gateway.metrics import GatewayMetrics
from coordinator.gateway.pipeline import Call, Hop, Pipeline, Upstream
from coordinator.gateway.routing import Target
from coordinator.gateway.sse import encode_event

OVERLOADED = encode_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
START = encode_event("message_start", {"type": "message_start", "message": {
    "id": "m", "type": "message", "role": "assistant", "model": "x", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}})
BLOCK = encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
DELTA = encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": "hi"}})
END = [encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
       encode_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                      "usage": {"output_tokens": 2}}),
       encode_event("message_stop", {"type": "message_stop"})]


class ScriptedStreams(Backend):
    """Answers each call with the next list of SSE events."""

    kind = "anthropic"
    apis = frozenset({"anthropic"})

    def __init__(self, *streams: list[bytes]) -> None:
        super().__init__("scripted", BackendConfig(max_retries=2, retry_base_s=0.01))
        self.streams = list(streams)
        self.calls = 0

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.calls += 1
        events = self.streams.pop(0)

        async def chunks() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return UpstreamResponse(200, {"content-type": "text/event-stream"}, chunks=chunks())


def _run(backend: ScriptedStreams) -> tuple[Flight, Ledger]:
    clock = ManualClock()
    ledger = Ledger(FleetConfig())
    pipeline = Pipeline(ledger=ledger, metrics=GatewayMetrics(), barrier=WarmupBarrier(wait_s=1, clock=clock),
                        clock=clock, rand=lambda: 0.5)
    upstream = Upstream("scripted", backend, backend.config, clock)
    price = price_for("claude-sonnet-4-6")
    hop = Hop(Target("default", "scripted", "x", price), upstream, price)
    call = Call(dialect=ANTHROPIC, path="/v1/messages", body={"model": "x"}, stream=True, headers={}, query="",
                priority=2, who=Who("t"), hops=[hop])

    async def main() -> Flight:
        flight = Flight(b"k", True)
        await pipeline.run(flight, call)
        return flight

    return asyncio.run(main()), ledger


def test_an_error_event_before_any_content_is_retried_invisibly() -> None:
    backend = ScriptedStreams([OVERLOADED], [START, BLOCK, DELTA, *END])
    flight, ledger = _run(backend)
    assert backend.calls == 2 and flight.reply is not None and flight.error is None
    assert OVERLOADED not in flight.events and flight.events[0] == START
    assert ledger.totals["upstream_calls"] == 2 and ledger.totals["output_tokens"] == 2


def test_an_error_event_after_content_ends_the_stream_once_and_bills_what_was_used() -> None:
    backend = ScriptedStreams([START, BLOCK, DELTA, OVERLOADED])
    flight, ledger = _run(backend)
    assert backend.calls == 1 and flight.reply is None and flight.error is not None
    assert flight.events == [START, BLOCK, DELTA, OVERLOADED]  # the upstream's own error, not a second one
    assert ledger.totals["input_tokens"] == 10
