"""The tools a profile's call-control keys add to the accept body, and function URLs."""

from __future__ import annotations

from types import MappingProxyType

import httpx
import pytest

from app.calls.call_control import CallControl, CompanyFunction, TransferTarget
from app.openai_calls import OpenAICallsClient
from app.outbound_urls import check_outbound_url
from app.rules.accept_body import build_accept_body, validate_session_config
from app.rules.call_control_tools import call_control_tools, with_call_control_tools
from tests.fake_openai import MOCK_BASE_URL, FakeOpenAI

CONTROL = CallControl(
    transfer_targets=MappingProxyType(
        {
            "front_desk": TransferTarget("sip:desk@pbx.example.com", "the front desk"),
            "nurse": TransferTarget("tel:+15550100"),
        }
    ),
    end_call=True,
    functions=MappingProxyType(
        {
            "lookup_appointment": CompanyFunction(
                "lookup_appointment",
                "https://clinic.example/fn",
                "Find the caller's next appointment.",
                MappingProxyType(
                    {
                        "type": "object",
                        "properties": {"date_of_birth": {"type": "string"}},
                        "required": ["date_of_birth"],
                    }
                ),
            )
        }
    ),
)


def test_the_tools_in_order_with_their_parameters() -> None:
    tools = [tool.model_dump(exclude_none=True) for tool in call_control_tools(CONTROL)]
    assert [tool["name"] for tool in tools] == ["transfer_call", "end_call", "lookup_appointment"]
    assert tools[0]["parameters"]["properties"]["target"]["enum"] == ["front_desk", "nurse"]
    assert tools[0]["parameters"]["required"] == ["target"]
    assert "- front_desk: the front desk" in tools[0]["description"]
    assert tools[1]["parameters"] == {"type": "object", "properties": {}}
    assert tools[2]["parameters"]["required"] == ["date_of_birth"]
    assert tools[2]["description"] == "Find the caller's next appointment."


def test_no_call_control_no_tools() -> None:
    config = validate_session_config({"instructions": "Hi"})
    assert call_control_tools(CallControl(greeting="Hello")) == []
    assert with_call_control_tools(config, CallControl(greeting="Hello")) is config


async def test_the_accept_body_with_the_tools_passes_the_fake_openai_checks() -> None:
    mcp = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/sse"}
    config = validate_session_config({"instructions": "You are the clinic.", "tools": [mcp]})
    body = build_accept_body(with_call_control_tools(config, CONTROL))
    assert [tool.get("name", tool["type"]) for tool in body["tools"]] == [
        "mcp",
        "transfer_call",
        "end_call",
        "lookup_appointment",
    ]
    fake = FakeOpenAI()
    async with httpx.AsyncClient(transport=fake.mock_transport()) as http:
        client = OpenAICallsClient(http, base_url=MOCK_BASE_URL, api_key="sk-test", deadline_s=5)
        result = await client.perform("accept", "rtc_tools", body)
    assert result.outcome == "ok"
    [request] = fake.requests
    assert request.problems == []


def test_a_tool_name_the_profile_already_has_is_refused() -> None:
    own = {"type": "function", "name": "end_call", "description": "x", "parameters": {}}
    config = validate_session_config({"tools": [own]})
    with pytest.raises(ValueError, match="already has a tool named 'end_call'"):
        with_call_control_tools(config, CONTROL)


@pytest.mark.parametrize("name", ["transfer_call", "end_call"])
def test_a_company_function_cannot_take_a_built_in_name(name: str) -> None:
    with pytest.raises(ValueError, match="built-in"):
        CompanyFunction(name, "https://x.example")


@pytest.mark.parametrize("timeout_s", [0, -1, 30.5])
def test_function_timeouts_are_capped(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        CompanyFunction("f", "https://x.example", timeout_s=timeout_s)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.clinic.example/fn",
        "http://127.0.0.1:8080/fn",
        "http://[::1]/fn",
        "http://10.1.2.3/fn",
        "http://192.168.0.4/fn",
        "http://localhost:9000/fn",
    ],
)
def test_allowed_function_urls(url: str) -> None:
    assert check_outbound_url(url)[0] is None


@pytest.mark.parametrize(
    "url",
    ["http://api.clinic.example/fn", "http://8.8.8.8/fn", "ftp://x.example/", "https://", "fn"],
)
def test_refused_function_urls(url: str) -> None:
    assert check_outbound_url(url)[0] is not None
