"""Platform semantics through the stock openai-python SDK (1.102.0).

Run by tests/sdk_python.rs with TOLLGATE_BASE_URL, TOLLGATE_KEY (the owner)
and TOLLGATE_OTHER_KEY (another tenant); prints one JSON object for the Rust
test to check against the ledger. Any unexpected SDK exception fails it.
"""
import json
import os
import time

import openai
from openai import OpenAI

base = os.environ["TOLLGATE_BASE_URL"]
owner = OpenAI(base_url=base, api_key=os.environ["TOLLGATE_KEY"], max_retries=0)
other = OpenAI(base_url=base, api_key=os.environ["TOLLGATE_OTHER_KEY"], max_retries=0)
out = {}

# Stateful turn, then a follow-up that continues it.
first = owner.responses.create(
    model="turing/gpt-5.5", input="remember 7",
    extra_body={"tags": ["stateful"], "metadata": {"mock_usage": "10,0,10,0"}},
)
follow = owner.responses.create(
    model="turing/gpt-5.5", input="what was it?", previous_response_id=first.id,
    metadata={"mock_usage": "20,0,20,0"},
)
assert follow.previous_response_id == first.id
out["first"], out["follow"] = first.id, follow.id

# Another tenant cannot see, continue, list, cancel or delete it.
refused = {}
for name, call in [
    ("create", lambda: other.responses.create(model="turing/gpt-5.5", input="x",
                                              previous_response_id=first.id)),
    ("retrieve", lambda: other.responses.retrieve(first.id)),
    ("input_items", lambda: other.responses.input_items.list(first.id)),
    ("cancel", lambda: other.responses.cancel(first.id)),
    ("delete", lambda: other.responses.delete(first.id)),
]:
    try:
        call()
        raise AssertionError(f"{name} of another tenant's response succeeded")
    except openai.NotFoundError as e:
        refused[name] = e.status_code
out["refused"] = refused

# The owner can.
assert owner.responses.retrieve(first.id).id == first.id
items = owner.responses.input_items.list(first.id)
assert items.data, "input items listed"

# A fallback through extra_body: the requested model fails, gpt-5 serves.
fallback = owner.responses.create(
    model="turing/gpt-5.5", input="fall back", metadata={"mock_http_status": "503"},
    extra_body={"turing_options": {"fallbacks": [
        {"model": "turing/gpt-5", "metadata": {"mock_usage": "100,0,10,0"}}]}},
)
assert fallback.model.startswith("gpt-5-"), fallback.model
out["fallback"] = fallback.id

# Background: returns at once, finishes later, billed once.
background = owner.responses.create(
    model="turing/gpt-5.5", input="later", background=True,
    metadata={"mock_usage": "30,0,30,0"},
)
assert background.status == "queued", background.status
for _ in range(50):
    polled = owner.responses.retrieve(background.id)
    if polled.status not in ("queued", "in_progress"):
        break
    time.sleep(0.1)
assert polled.status == "completed", polled.status
out["background"] = background.id

owner.responses.delete(follow.id)
print(json.dumps(out))
