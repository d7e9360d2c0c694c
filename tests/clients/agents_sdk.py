"""The OpenAI Agents SDK (openai-agents), default settings, against one base URL.

Run by tests/clients.rs twice: directly against the simulated upstream and
through Tollgate, with CLIENT_BASE_URL, CLIENT_API_KEY, CLIENT_MODEL (the
platform's name, `turing/...` through Tollgate) and CLIENT_BARE_MODEL (the
same model without a prefix), plus OPENAI_BASE_URL / OPENAI_API_KEY for the
SDK's own default client. Tracing export is disabled (no internet). Prints
one JSON object: what each run handed back (the Rust test normalises ids and
compares the two runs) and the usage of every model response in request
order.
"""
import asyncio
import json
import os

from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, set_tracing_disabled
from agents.exceptions import UserError
from agents.models.multi_provider import MultiProvider
from importlib.metadata import version
from openai import AsyncOpenAI

assert version("openai-agents") == os.environ["CLIENT_EXPECT_VERSION"], version("openai-agents")
set_tracing_disabled(True)

MODEL = os.environ["CLIENT_MODEL"]
BARE = os.environ["CLIENT_BARE_MODEL"]
INSTRUCTIONS = "You answer in one short sentence."


def usage_of(result):
    u = result.context_wrapper.usage
    return {"requests": u.requests, "input": u.input_tokens,
            "cached": u.input_tokens_details.cached_tokens, "output": u.output_tokens,
            "reasoning": u.output_tokens_details.reasoning_tokens}


def per_response(result):
    return [[r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens,
             r.usage.output_tokens, r.usage.output_tokens_details.reasoning_tokens]
            for r in result.raw_responses]


def summary(result):
    return {"final_output": result.final_output, "usage": usage_of(result),
            "items": [item.type for item in result.new_items],
            "response_ids": [r.response_id for r in result.raw_responses]}


async def streamed(agent, prompt, **kwargs):
    run = Runner.run_streamed(agent, prompt, **kwargs)
    events = []
    async for event in run.stream_events():
        data = getattr(event, "data", None)
        events.append([event.type, getattr(data, "type", None) or getattr(event, "name", None)])
    return run, events


async def main():
    out = {"usages": []}
    client = AsyncOpenAI(base_url=os.environ["CLIENT_BASE_URL"], api_key=os.environ["CLIENT_API_KEY"])
    agent = Agent(name="assistant", instructions=INSTRUCTIONS,
                  model=OpenAIResponsesModel(model=MODEL, openai_client=client))

    # 1. Runner.run with an explicit Responses model and client
    result = await Runner.run(agent, "Hello from the Agents SDK")
    out["run"] = summary(result)
    out["usages"] += per_response(result)

    # 2. Runner.run_streamed
    run, events = await streamed(agent, "Stream it")
    out["run_streamed"] = {**summary(run), "events": events}
    out["usages"] += per_response(run)

    # 3. A bare model name: the SDK's default provider and client, configured
    # by OPENAI_BASE_URL / OPENAI_API_KEY alone.
    bare = Agent(name="bare", instructions=INSTRUCTIONS, model=BARE)
    result = await Runner.run(bare, "Hello with the defaults")
    out["run_default_client"] = summary(result)
    out["usages"] += per_response(result)

    # 4. A `turing/...` name as a string: the default provider reads `turing/`
    # as a provider prefix and refuses it before sending anything ...
    prefixed = Agent(name="prefixed", instructions=INSTRUCTIONS, model="turing/" + BARE)
    try:
        await Runner.run(prefixed, "never sent")
        raise AssertionError("a turing/ model string was accepted by the default provider")
    except UserError as e:
        out["prefix_refused"] = str(e)
    # ... unless it is told to pass unknown prefixes on as part of the id.
    keep = RunConfig(model_provider=MultiProvider(unknown_prefix_mode="model_id"))
    agent_by_name = Agent(name="by_name", instructions=INSTRUCTIONS, model=MODEL)
    result = await Runner.run(agent_by_name, "Hello by name", run_config=keep)
    out["run_model_id_prefix"] = summary(result)
    out["usages"] += per_response(result)

    # 5. The Responses WebSocket transport, streamed.
    ws = RunConfig(model_provider=MultiProvider(unknown_prefix_mode="model_id",
                                                openai_use_responses_websocket=True))
    run, events = await streamed(agent_by_name, "Over the socket", run_config=ws)
    out["run_streamed_websocket"] = {**summary(run), "events": events}
    out["usages"] += per_response(run)
    print(json.dumps(out))


asyncio.run(main())
