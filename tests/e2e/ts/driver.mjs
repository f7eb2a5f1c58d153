// Drive the real LiteralAI TypeScript SDK (@literalai/client) the way a
// Node chat backend does: a thread upserted when a chat opens, each message
// a step sent without awaiting its result, the assistant's answer created
// empty and updated when it is ready. A failed send nobody awaits becomes an
// unhandled rejection (Node's "Task exception was never retrieved"), and
// its step is lost.
//
// Prints one JSON object in the shape tests/e2e/driver.py prints, so the
// suite scores both SDKs alike: what was written last to each step, the
// threads, and the count of unhandled rejections.
//
//   node driver.mjs --server URL --conversations 4 --messages 12 --pace 1.2

import { randomUUID } from "node:crypto";
import { LiteralClient } from "@literalai/client";

const opts = { server: "", conversations: 4, messages: 5, pace: 0.08 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, "");
  opts[key] = key === "server" ? argv[i + 1] : Number(argv[i + 1]);
}

const rejections = { count: 0, samples: [] };
process.on("unhandledRejection", (e) => {
  rejections.count += 1;
  if (rejections.samples.length < 5) {
    rejections.samples.push(String(e && e.message ? e.message : e).slice(0, 200));
  }
});

const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
const client = new LiteralClient({ apiKey: "e2e-key-not-a-secret", apiUrl: opts.server });
const expected = {};
const threads = {};
const pending = new Set();
let writes = 0;

// Fire and forget, as the app does. In the app nothing handles a failed
// send, so each one is an unhandled rejection: counted here as one, since
// the driver must also know when every send is over.
function fire(promise) {
  writes += 1;
  const settled = promise.then(
    () => {},
    (e) => {
      rejections.count += 1;
      if (rejections.samples.length < 5) {
        rejections.samples.push(String(e && e.message ? e.message : e).slice(0, 200));
      }
    },
  );
  pending.add(settled);
  settled.finally(() => pending.delete(settled));
}

async function conversation(c) {
  const name = `conversation ${c}`;
  const thread = client.thread({ id: randomUUID(), name });
  threads[thread.id] = { name, participant: null };
  fire(thread.upsert());
  for (let m = 0; m < opts.messages; m++) {
    const question = thread.step({
      id: randomUUID(),
      type: "user_message",
      name: "User",
      output: { content: `question ${c}.${m}` },
    });
    fire(question.send());
    expected[question.id] = `question ${c}.${m}`;
    const answer = thread.step({
      id: randomUUID(),
      type: "assistant_message",
      name: "Assistant",
      output: { content: "" },
    });
    fire(answer.send());
    await sleep(opts.pace);
    const text = `The answer to ${c}.${m} is ${c * 100 + m}.`;
    answer.output = { content: text };
    fire(answer.send());
    expected[answer.id] = text;
    await sleep(opts.pace);
  }
}

await Promise.all(Array.from({ length: opts.conversations }, (_, c) => conversation(c)));
while (pending.size > 0) {
  await Promise.allSettled([...pending]);
}
// Let the last rejections be reported.
await sleep(0.2);
console.log(
  JSON.stringify({
    raced: {},
    writes,
    expected,
    threads,
    thread_errors: 0,
    task_exceptions: rejections.count,
    task_exception_samples: rejections.samples,
    sdk_errors: 0,
    sdk_error_samples: [],
  }),
);
