// The official Resend Node SDK (npm `resend`, pinned in package.json) as a
// test client for mta's sending API (issue 13). pytest runs it through
// tests/support/resend_sdk.py:run_node.
//
// stdin: one JSON document
//   {"base_url": "http://127.0.0.1:PORT", "api_key": "re_…",
//    "via": "option" | "env",          (default "option")
//    "ops": [{"op": "emails.send", "args": {…}, "options": {…}}, …]}
//   via "option": new Resend(api_key, { baseUrl: base_url })
//   via "env":    RESEND_BASE_URL=base_url, then new Resend(api_key) — the
//                 one-variable switch an application makes
//   args are the SDK's own arguments (camelCase where the SDK wants it:
//   replyTo, scheduledAt, contentType, contentId; the SDK turns them into
//   the wire's snake_case and silently drops keys it does not know).
//   templates.*: {"id"} is the template's id or alias (update: {"id", …changes});
//   create/update take replyTo and variables [{key, type, fallbackValue}].
//   An attachment {"content_b64": "…"} becomes {"content": Buffer} before
//   the call, so the SDK sends a Buffer the way a real application does.
//   {"op": …, "concurrent": N} runs N copies of that op at once (Promise.all).
//
// stdout: one JSON line per op, in order:
//   {"op", "data", "error", "headers"}     exactly what the SDK returned
//   {"op", "concurrent": N, "results": [{"data", "error", "headers"}, …]}
//   {"op", "data": null, "error": null, "exception": "…"}   the SDK threw
//
// Invariants: ops run one after another (a concurrent op's copies at once);
// the only network peer is base_url (the SDK has no telemetry); the exit
// status is 0 whenever the input was a valid document, whatever the API said.
import { Buffer } from 'node:buffer';
import { Resend } from 'resend';

const OPS = {
  'emails.send': (r, a, o) => r.emails.send(a, o),
  'emails.get': (r, a, o) => r.emails.get(a.id, o),
  'emails.list': (r, a, o) => r.emails.list(a, o),
  'emails.update': (r, a, o) => r.emails.update(a, o),
  'emails.cancel': (r, a, o) => r.emails.cancel(a.id, o),
  'batch.send': (r, a, o) => r.batch.send(a, o),
  'apiKeys.create': (r, a, o) => r.apiKeys.create(a, o),
  'apiKeys.list': (r, a, o) => r.apiKeys.list(a, o),
  'apiKeys.remove': (r, a, o) => r.apiKeys.remove(a.id, o),
  'domains.create': (r, a, o) => r.domains.create(a, o),
  'domains.get': (r, a, o) => r.domains.get(a.id, o),
  'domains.list': (r, a, o) => r.domains.list(a, o),
  'domains.verify': (r, a, o) => r.domains.verify(a.id, o),
  'domains.remove': (r, a, o) => r.domains.remove(a.id, o),
  'templates.create': (r, a, o) => r.templates.create(a, o),
  'templates.get': (r, a, o) => r.templates.get(a.id, o),
  'templates.list': (r, a, o) => r.templates.list(a, o),
  'templates.update': (r, { id, ...a }, o) => r.templates.update(id, a, o),
  'templates.publish': (r, a, o) => r.templates.publish(a.id, o),
  'templates.duplicate': (r, a, o) => r.templates.duplicate(a.id, o),
  'templates.remove': (r, a, o) => r.templates.remove(a.id, o),
};

function withBuffers(email) {
  if (!email || !Array.isArray(email.attachments)) return email;
  const attachments = email.attachments.map((att) => {
    if (!att || typeof att.content_b64 !== 'string') return att;
    const { content_b64: b64, ...rest } = att;
    return { ...rest, content: Buffer.from(b64, 'base64') };
  });
  return { ...email, attachments };
}

function prepare(name, args) {
  if (name === 'emails.send') return withBuffers(args);
  if (name === 'batch.send' && Array.isArray(args)) return args.map(withBuffers);
  return args;
}

async function once(client, spec) {
  const call = OPS[spec.op];
  if (!call) throw new Error(`unknown op ${JSON.stringify(spec.op)}`);
  const { data, error, headers } = await call(client, prepare(spec.op, spec.args ?? {}),
    spec.options ?? {});
  return { data: data ?? null, error: error ?? null, headers: headers ?? null };
}

async function run(client, spec) {
  try {
    if (spec.concurrent !== undefined) {
      const copies = Array.from({ length: spec.concurrent }, () => once(client, spec));
      return { op: spec.op, concurrent: spec.concurrent, results: await Promise.all(copies) };
    }
    return { op: spec.op, ...(await once(client, spec)) };
  } catch (err) {
    return { op: spec.op, data: null, error: null, exception: String(err?.stack ?? err) };
  }
}

async function main() {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  const doc = JSON.parse(text);
  let client;
  if (doc.via === 'env') {
    process.env.RESEND_BASE_URL = doc.base_url;
    client = new Resend(doc.api_key);
  } else {
    delete process.env.RESEND_BASE_URL;
    client = new Resend(doc.api_key, { baseUrl: doc.base_url });
  }
  for (const spec of doc.ops) {
    process.stdout.write(`${JSON.stringify(await run(client, spec))}\n`);
  }
}

await main();
