// The `{{name}}` step: greets someone and, given a webhook, posts the greeting to it.
//
// The host's interfaces are imported by their WIT names (see wit/step.wit); `fetch` goes
// through wasi:http, so it reaches only the hosts the pipeline granted.
import { write, summary } from 'skiff:step/log@0.1.0';
import { get as secret } from 'skiff:step/secrets@0.1.0';

/** A failure the host reports as a value: `tag` is `invalid-input`, `failed` or `denied`. */
class StepError extends Error {
  constructor(tag, message) {
    super(message);
    this.payload = { tag, val: message };
  }
}

const log = (message) => write('info', message);

/** What the step takes, returns and asks for: `skiff step inspect` shows it, and a pipeline must grant the host and the secret before the step starts. */
export function describe() {
  return {
    name: '{{name}}',
    version: '0.1.0',
    description: 'Greets someone, and posts the greeting to a webhook if given one.',
    inputs: [
      { name: 'who', description: 'Whom to greet', required: false, default: 'world' },
      { name: 'webhook', description: 'A URL to POST the greeting to (its host must be granted)', required: false },
    ],
    outputs: [
      { name: 'greeting', description: 'The greeting' },
      { name: 'status', description: "The webhook's HTTP status (empty without a webhook)" },
    ],
    capabilities: { hosts: ['${inputs.webhook}'], secrets: ['TOKEN'], process: false },
  };
}

/** Runs the step once: returns its outputs, or throws a StepError. */
export async function run(invocation) {
  try {
    return await greet(invocation);
  } catch (e) {
    // Anything else thrown would end the step as a crash: report it as a failure instead.
    throw e instanceof StepError ? e : new StepError('failed', String(e?.message ?? e));
  }
}

async function greet(invocation) {
  const inputs = Object.fromEntries(invocation.inputs.map(({ key, value }) => [key, value]));
  const who = inputs.who || 'world';
  const greeting = `hello, ${who}`;
  log(greeting);
  let status = '';
  if (inputs.webhook) {
    const headers = { 'content-type': 'application/json' };
    // A secret is only ever handed to the step that was granted it; the host masks it in every log line.
    const token = secret('TOKEN');
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    const response = await fetch(inputs.webhook, {
      method: 'POST',
      headers,
      body: JSON.stringify({ text: greeting, from: '{{name}}' }),
    });
    log(`the webhook answered ${response.status}: ${await response.text()}`);
    if (!response.ok) throw new StepError('failed', `the webhook answered ${response.status}`);
    status = String(response.status);
  }
  summary(`Greeted **${who}**.`);
  return { outputs: [{ key: 'greeting', value: greeting }, { key: 'status', value: status }] };
}
