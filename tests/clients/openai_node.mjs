// The stock openai-node SDK, default settings, against one base URL.
//
// Run by tests/clients.rs twice: directly against the simulated upstream and
// through Tollgate, with CLIENT_BASE_URL, CLIENT_API_KEY and CLIENT_MODEL set
// (CLIENT_UNKNOWN_MODEL too when it talks to Tollgate). Prints one JSON
// object: what the SDK handed back (the Rust test normalises ids and times
// and compares the two runs), the usage of every response in request order,
// and under "gateway_only" what only Tollgate answers. Any unexpected error
// fails the script (exit status 1).
import OpenAI from 'openai';
import { VERSION } from 'openai/version';
import { ResponsesWS } from 'openai/resources/responses/ws';

const env = process.env;
if (VERSION !== env.CLIENT_EXPECT_VERSION) throw new Error(`openai-node ${VERSION}`);
const MODEL = env.CLIENT_MODEL;
const client = new OpenAI({ baseURL: env.CLIENT_BASE_URL, apiKey: env.CLIENT_API_KEY });
const out = { usages: [] };
const usage = (u) => [
  u.input_tokens,
  u.input_tokens_details.cached_tokens,
  u.output_tokens,
  u.output_tokens_details.reasoning_tokens,
];

// 1. responses.create, JSON
const r = await client.responses.create({
  model: MODEL,
  input: 'Hello from openai-node',
  metadata: { mock_usage: '700,100,300,50' },
});
out.create = { response: r, output_text: r.output_text };
out.usages.push(usage(r.usage));

// 2. responses.create with stream: true
const stream = await client.responses.create({ model: MODEL, input: 'Stream, please', stream: true });
const events = [];
for await (const event of stream) events.push(event);
const last = events[events.length - 1];
if (last.type !== 'response.completed') throw new Error(last.type);
out.stream = events;
out.usages.push(usage(last.response.usage));

// 3. WebSocket mode (ResponsesWS, the `ws` package): responses one after
// another on one socket, an error event for a parameter the upstream
// refuses, and the socket still serving after it.
const ws = new ResponsesWS(client);
const errors = [];
ws.on('error', (error) => errors.push(error));
const queue = [];
let wake = null;
ws.on('event', (event) => {
  queue.push(event);
  if (wake) wake();
});
async function next() {
  while (queue.length === 0) await new Promise((resolve) => (wake = resolve));
  return queue.shift();
}
async function untilTerminal() {
  const seen = [];
  for (;;) {
    const event = await next();
    seen.push(event);
    if (['response.completed', 'response.incomplete', 'response.failed', 'error'].includes(event.type)) {
      return seen;
    }
  }
}
const socket = [];
for (let i = 0; i < 3; i++) {
  ws.send({
    type: 'response.create',
    model: MODEL,
    input: `socket ${i}`,
    metadata: { mock_usage: `${30 + i},${i},${40 + i},${i}` },
  });
  const seen = await untilTerminal();
  const end = seen[seen.length - 1];
  if (end.type !== 'response.completed') throw new Error(JSON.stringify(end));
  socket.push(seen);
  out.usages.push(usage(end.response.usage));
}
ws.send({ type: 'response.create', model: MODEL, input: 'refused', metadata: { mock_bogus: '1' } });
const refused = await untilTerminal();
out.socket_error = {
  event: refused[refused.length - 1],
  // The SDK also raises it as a WebSocketError carrying the event.
  raised: errors.map((e) => ({ name: e.constructor.name, message: e.message, error: e.error })),
};
ws.send({ type: 'response.create', model: MODEL, input: 'after the error' });
const after = await untilTerminal();
socket.push(after);
out.usages.push(usage(after[after.length - 1].response.usage));
out.socket = socket;

if (env.CLIENT_UNKNOWN_MODEL) {
  out.gateway_only = {};
  ws.send({ type: 'response.create', model: env.CLIENT_UNKNOWN_MODEL, input: 'x' });
  const seen = await untilTerminal();
  out.gateway_only.socket_unknown_model = seen[seen.length - 1];
  try {
    await client.responses.create({ model: env.CLIENT_UNKNOWN_MODEL, input: 'x' });
    throw new Error('unknown model accepted');
  } catch (e) {
    if (!(e instanceof OpenAI.NotFoundError)) throw e;
    out.gateway_only.http_unknown_model = { status: e.status, code: e.code, param: e.param, type: e.type };
  }
}
ws.close();
console.log(JSON.stringify(out));
