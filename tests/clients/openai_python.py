"""The stock openai-python SDK (3.x), default settings, against one base URL.

Run by tests/clients.rs twice: directly against the simulated upstream and
through Tollgate, with CLIENT_BASE_URL, CLIENT_API_KEY and CLIENT_MODEL set
(CLIENT_UNKNOWN_MODEL too when it talks to Tollgate). Prints one JSON object:
everything the SDK handed back (the Rust test normalises ids and times and
compares the two runs), the usage of every response in request order, and
under "gateway_only" what only Tollgate answers. Any unexpected SDK
exception fails the script.
"""
import json
import os

import openai
from openai import OpenAI
from openai.types.responses.responses_server_event import ResponseWsError

assert openai.__version__ == os.environ["CLIENT_EXPECT_VERSION"], openai.__version__

MODEL = os.environ["CLIENT_MODEL"]
client = OpenAI(base_url=os.environ["CLIENT_BASE_URL"], api_key=os.environ["CLIENT_API_KEY"])
out = {"usages": []}


def usage(u):
    return [u.input_tokens, u.input_tokens_details.cached_tokens,
            u.output_tokens, u.output_tokens_details.reasoning_tokens]


def dump(x):
    return x.model_dump(mode="json")


# 1. responses.create, JSON
r = client.responses.create(
    model=MODEL, input="Hello from openai-python", metadata={"mock_usage": "1200,200,900,600"}
)
out["create"] = {"response": dump(r), "output_text": r.output_text}
out["usages"].append(usage(r.usage))

# 2. responses.create(stream=True): every event the SDK yields
events = list(client.responses.create(model=MODEL, input="Stream, please", stream=True))
assert events[-1].type == "response.completed", events[-1].type
out["stream"] = [dump(e) for e in events]
out["usages"].append(usage(events[-1].response.usage))

# 3. the stream helper and its final response
with client.responses.stream(model=MODEL, input="With the helper") as stream:
    kinds = [e.type for e in stream]
    final = stream.get_final_response()
out["stream_helper"] = {"events": kinds, "final": dump(final), "output_text": final.output_text}
out["usages"].append(usage(final.usage))

# 4. responses.retrieve of the first one
got = client.responses.retrieve(r.id)
assert got.id == r.id
out["retrieve"] = dump(got)

# 5. WebSocket mode: several responses on one connection, an error event the
# SDK parses (a parameter the upstream refuses), and the socket still serving.
socket = []
with client.responses.connect() as connection:
    def until_terminal():
        seen = []
        for event in connection:
            seen.append(dump(event))
            if event.type in ("response.completed", "response.incomplete", "response.failed", "error"):
                return event, seen
        raise AssertionError("the connection closed mid-response")

    for i in range(3):
        connection.response.create(model=MODEL, input=f"socket {i}",
                                   metadata={"mock_usage": f"{10 + i},{i},{20 + i},{i}"})
        last, seen = until_terminal()
        assert last.type == "response.completed", last.type
        socket.append(seen)
        out["usages"].append(usage(last.response.usage))
    connection.response.create(model=MODEL, input="refused", metadata={"mock_bogus": "1"})
    error, seen = until_terminal()
    assert isinstance(error, ResponseWsError), type(error)
    out["socket_error"] = {"event": dump(error), "class": type(error).__name__}
    connection.response.create(model=MODEL, input="after the error")
    last, seen = until_terminal()
    assert last.type == "response.completed", last.type
    socket.append(seen)
    out["usages"].append(usage(last.response.usage))

    unknown = os.environ.get("CLIENT_UNKNOWN_MODEL")
    if unknown:
        connection.response.create(model=unknown, input="x")
        error, _ = until_terminal()
        assert isinstance(error, ResponseWsError), type(error)
        out["gateway_only"] = {"socket_unknown_model": dump(error)}
out["socket"] = socket

if unknown:
    try:
        client.responses.create(model=unknown, input="x")
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        out["gateway_only"]["http_unknown_model"] = {
            "status": e.status_code, "code": e.code, "param": e.param, "type": e.type}

print(json.dumps(out))
