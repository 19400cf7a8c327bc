"""Who may do what with which token (issue 14 item 3), what clients probe (issue 10), and the default model."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import anthropic
import httpx
import openai
import pytest

from coordinator.backends.models import FALLBACK_MODEL, default_model, sdk_models
from coordinator.config import FleetConfig
from coordinator.gateway.accounting import DEFAULT_PRICES, price_for
from coordinator.gateway.proxy import _priority
from coordinator.gateway.tokens import read_token, task_token
from tests.fake_upstream import fake_upstream  # noqa: F401 - fixture
from tests.gateway_support import start_gateway, user  # noqa: F401

MODEL = "claude-sonnet-4-6"


def test_fleet_token_requests_are_billed_to_unassigned_and_count_against_the_fleet_budget(start_gateway,
                                                                                         fake_upstream) -> None:
    gw = start_gateway(fleet={"max_usd": 0.00035})
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0)
    client.messages.create(model=MODEL, max_tokens=16, messages=user("spent with the token from gateway.json"))
    stats = gw.gateway.stats()
    assert stats["tasks"]["unassigned"]["requests"] == 1 and stats["tasks"]["unassigned"]["usd"] == stats["usd"] > 0
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=MODEL, max_tokens=16, messages=user("and again"))
    assert info.value.status_code == 402 and "fleet" in info.value.message


def test_a_task_token_can_lower_its_priority_but_never_raise_it() -> None:
    fleet = "cgf-test"
    claims = read_token(fleet, task_token(fleet, "t", priority=2))

    def priority(header: str | None, who=claims) -> int:
        return _priority(SimpleNamespace(headers={} if header is None else {"x-coordinator-priority": header}), who)

    assert [priority(h) for h in (None, "0", "1", "2", "3", "junk")] == [2, 2, 2, 2, 3, 2]
    fleet_claims = read_token(fleet, fleet)
    assert priority("0", fleet_claims) == 0  # the fleet token (the coordinator itself) may set any


def test_stats_need_the_fleet_token_and_a_task_token_reads_only_its_own_usage(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    mine, other = task_token(gw.token, "mine"), task_token(gw.token, "other")
    anthropic.Anthropic(base_url=gw.url, api_key=other, max_retries=0).messages.create(
        model=MODEL, max_tokens=8, messages=user("other's work"))

    def get(path: str, token: str) -> httpx.Response:
        return httpx.get(gw.url + path, headers={"x-api-key": token})

    assert get("/v1/coordinator/stats", mine).status_code == 403
    refused = get("/v1/coordinator/usage/other", mine)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert get("/v1/coordinator/usage/mine", mine).json()["requests"] == 0
    assert get("/v1/coordinator/usage/other", other).json()["requests"] == 1
    assert get("/v1/coordinator/usage/other", gw.token).json()["requests"] == 1
    assert get("/v1/coordinator/stats", gw.token).json()["tasks"]["other"]["requests"] == 1


def test_health_and_models_answer_each_sdk_in_its_own_format_and_need_a_token(start_gateway, fake_upstream) -> None:
    gw = start_gateway()
    token = task_token(gw.token, "t")
    assert httpx.get(gw.url + "/health", headers={"authorization": f"Bearer {token}"}).json()["ok"] is True
    assert httpx.get(gw.url + "/health").status_code == 401
    listed = anthropic.Anthropic(base_url=gw.url, api_key=token, max_retries=0).models.list()
    assert [m.id for m in listed.data] == ["default", "gpt-4o-mini"] and listed.data[0].type == "model"
    assert "claude-sonnet-4-6" in listed.data[0].display_name and listed.data[0].created_at.year >= 2025
    raw = httpx.get(gw.url + "/v1/models", headers={"x-api-key": token, "anthropic-version": "2023-06-01"}).json()
    assert (raw["has_more"], raw["first_id"], raw["last_id"]) == (False, "default", "gpt-4o-mini")
    models = openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0).models.list()
    assert [(m.id, m.object) for m in models.data] == [("default", "model"), ("gpt-4o-mini", "model")]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert fake_upstream.calls == []


def test_the_default_model_is_current_in_the_sdk_priced_and_configurable() -> None:
    names, deprecated = sdk_models()
    model = default_model()
    assert model not in deprecated and "claude-sonnet-4-5" in deprecated  # the old default retires 2026-11-30
    assert model in names or (not names and model == FALLBACK_MODEL)
    assert any(model.startswith(prefix) for prefix in DEFAULT_PRICES)  # a known price, not the fallback guess
    assert price_for(model).output > 0
    config = FleetConfig.model_validate({"models": {"default": {"backend": "default", "model": "my-model"}}})
    assert config.models["default"].model == "my-model" and FleetConfig().models["default"].model is None


def test_status_and_help_do_not_import_the_anthropic_sdk() -> None:
    code = ("import sys; from coordinator.config import FleetConfig; import coordinator.report.status; "
            "import coordinator.cli; FleetConfig(); print('anthropic' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
