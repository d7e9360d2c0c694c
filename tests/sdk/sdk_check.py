"""Drives a running Tollgate with the stock openai-python SDK (1.102.0).

Run by tests/sdk_python.rs with TOLLGATE_BASE_URL and TOLLGATE_KEY set; prints
one JSON object describing what the SDK saw, which the Rust test checks
against the ledger. Any SDK exception fails the script (exit status 1).
"""
import json
import os

import openai
from openai import OpenAI

assert openai.__version__ == "1.102.0", openai.__version__

client = OpenAI(
    base_url=os.environ["TOLLGATE_BASE_URL"],
    api_key=os.environ["TOLLGATE_KEY"],
    max_retries=0,
)
out = {}

# 1. responses.create, JSON
r = client.responses.create(
    model="turing/gpt-5.5",
    input="Hello",
    metadata={"mock_usage": "1200,200,900,600"},
)
assert r.output_text, "output_text must be readable"
out["create"] = {
    "id": r.id,
    "usage": [r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens,
              r.usage.output_tokens, r.usage.output_tokens_details.reasoning_tokens],
}

# 2. responses.create(stream=True)
events = list(client.responses.create(
    model="turing/gpt-5.5", input="Hi", stream=True,
    metadata={"mock_usage": "100,0,50,10", "mock_chunk_bytes": "13"},
))
assert events[0].type == "response.created", events[0].type
assert events[-1].type == "response.completed", events[-1].type
assert [e.sequence_number for e in events] == list(range(len(events)))
out["create_stream"] = {"id": events[-1].response.id, "events": len(events)}

# 3. responses.stream(...) with get_final_response()
with client.responses.stream(
    model="turing/gpt-5.5", input="Streamed",
    extra_body={"metadata": {"mock_usage": "500,100,300,200"}},
) as stream:
    text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    final = stream.get_final_response()
assert final.output_text == text and text
out["stream_helper"] = {"id": final.id, "service_tier": final.service_tier}

# 4. a stream that ends in response.incomplete
events = list(client.responses.create(
    model="turing/gpt-5.5", input="cut short", stream=True,
    metadata={"mock_usage": "40,0,16,0", "mock_status": "incomplete"},
))
assert events[-1].type == "response.incomplete", events[-1].type
assert events[-1].response.incomplete_details.reason == "max_output_tokens"
out["incomplete"] = {"id": events[-1].response.id}

# 5. platform fields through extra_body
r = client.responses.create(
    model="turing/gpt-5.5", input="with options",
    metadata={"mock_usage": "10,0,10,0"},
    extra_body={"turing_options": {"timeout": 30, "max_retries": 1}, "tags": ["stateful"]},
)
out["extra_body"] = {"id": r.id}

# 6. errors arrive as the SDK's typed exceptions with code and param
try:
    # An offered web_search is dropped; one the request cannot do without is not.
    client.responses.create(
        model="turing/gpt-5.5", input="x", tools=[{"type": "web_search"}], tool_choice="required"
    )
    raise AssertionError("unsupported tool accepted")
except openai.BadRequestError as e:
    out["unsupported_tool"] = {"status": e.status_code, "code": e.code, "param": e.param}
try:
    client.responses.create(model="turing/gpt-unknown", input="x")
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    out["unknown_model"] = {"status": e.status_code, "code": e.code}

print(json.dumps(out))
