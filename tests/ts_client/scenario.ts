// A new user's first session with the API, through types generated from the served
// /openapi.json by openapi-typescript and the openapi-fetch client: no casts, no `any`.
// tests/test_typescript_client.py generates schema.ts with generate.mjs (a .ts file, so that
// `skipLibCheck`, which spares node_modules, still checks it; `format: binary` typed `Blob`),
// then runs: node dist/scenario.js BASE_URL.
// Exits non-zero with a message on any mismatch.
import createClient from "openapi-fetch";

import type { components, paths } from "./schema.js";

type TaskCreate = components["schemas"]["TaskCreate"];
type TaskUpdate = components["schemas"]["TaskUpdate"];
type Problem = components["schemas"]["Problem"];
type Download =
  paths["/files/{file_id}"]["get"]["responses"][200]["content"]["application/octet-stream"];

function check(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new Error(`mismatch: ${what}`);
  }
}

function equal<T>(actual: T, expected: T, what: string): void {
  check(
    JSON.stringify(actual) === JSON.stringify(expected),
    `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`,
  );
}

async function main(baseUrl: string): Promise<void> {
  const anonymous = createClient<paths>({ baseUrl });
  const name = `ts${Math.random().toString(16).slice(2, 10)}`;
  const password = "generated pw 1";

  const registered = await anonymous.POST("/auth/register", {
    body: { username: name, email: `${name}@example.com`, password },
  });
  equal(registered.response.status, 201, "register status");
  check(registered.data !== undefined, "register body");
  equal(registered.data.username, name, "registered username");

  const login = await anonymous.POST("/auth/login", { body: { username: name, password } });
  check(login.data !== undefined, `login: ${login.response.status}`);
  const token: string = login.data.access_token;
  const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });

  // Defaulted fields (priority, tags, completed) left out: optional in the generated type.
  const draft: TaskCreate = { title: "Write the report" };
  const created = await client.POST("/tasks", { body: draft });
  equal(created.response.status, 201, "create status");
  check(created.data !== undefined, "created body");
  const task = created.data;
  equal(task.tags, [], "defaulted tags");
  equal(task.priority, "medium", "defaulted priority");
  equal(task.completed, false, "defaulted completed");
  equal(created.response.headers.get("Location"), `/tasks/${task.id}`, "Location");

  const listed = await client.GET("/tasks", { params: { query: { limit: 10 } } });
  check(listed.data !== undefined, `list: ${listed.response.status}`);
  equal(
    listed.data.map((item) => item.id),
    [task.id],
    "listed ids",
  );
  equal(listed.response.headers.get("X-Total-Count"), "1", "X-Total-Count");

  const got = await client.GET("/tasks/{task_id}", { params: { path: { task_id: task.id } } });
  check(got.data !== undefined, `get: ${got.response.status}`);
  equal(got.data.title, "Write the report", "got title");

  // Nullable fields accept null: the change clears them.
  const change: TaskUpdate = { description: null, due_date: null, completed: true };
  const seeded = await client.PATCH("/tasks/{task_id}", {
    params: { path: { task_id: task.id } },
    body: { description: "draft", due_date: "2030-01-31" },
  });
  check(seeded.data !== undefined, `seed: ${seeded.response.status}`);
  equal(seeded.data.due_date, "2030-01-31", "seeded due date");
  const patched = await client.PATCH("/tasks/{task_id}", {
    params: { path: { task_id: task.id } },
    body: change,
  });
  check(patched.data !== undefined, `patch: ${patched.response.status}`);
  const description: string | null = patched.data.description;
  equal(description, null, "cleared description");
  equal(patched.data.due_date, null, "cleared due date");
  equal(patched.data.completed, true, "completed");

  const missing = await client.GET("/tasks/{task_id}", {
    params: { path: { task_id: task.id + 1000 } },
  });
  equal(missing.response.status, 404, "missing status");
  check(missing.error !== undefined, "missing: a problem body");
  const problem: Problem = missing.error;
  equal(problem.code, "task_not_found", "problem code");
  equal(problem.status, 404, "problem status");
  // The members that only some problems have are optional: a 404 has none of them.
  const { type, title, status, detail, code, request_id } = problem;
  const minimal: Problem = { type, title, status, detail, code, request_id };
  equal(problem, minimal, "a 404 problem's members");

  const content = "hello, world\n";
  const uploaded = await client.POST("/tasks/{task_id}/files", {
    params: { path: { task_id: task.id } },
    // `format: binary` is generated as `Blob` (generate.mjs): the file goes as it is.
    body: { file: new Blob([content], { type: "text/plain" }) },
    bodySerializer(body) {
      const form = new FormData();
      form.append("file", body.file, "notes.txt");
      return form;
    },
  });
  check(uploaded.data !== undefined, `upload: ${uploaded.response.status}`);
  equal(uploaded.response.status, 201, "upload status");
  equal(uploaded.data.original_filename, "notes.txt", "uploaded name");
  equal(uploaded.data.file_size, content.length, "uploaded size");

  const downloaded = await client.GET("/files/{file_id}", {
    params: { path: { file_id: uploaded.data.id } },
    parseAs: "blob",
  });
  check(downloaded.data !== undefined, `download: ${downloaded.response.status}`);
  // The generated type of the bytes is `Blob` itself: what `parseAs: "blob"` reads fits it.
  const file: Download = downloaded.data;
  equal(file.size, content.length, "downloaded size");
  equal(
    Array.from(new Uint8Array(await file.arrayBuffer())),
    Array.from(new TextEncoder().encode(content)),
    "downloaded bytes",
  );
  const disposition = downloaded.response.headers.get("Content-Disposition") ?? "";
  check(disposition.startsWith("attachment;"), `Content-Disposition: ${disposition}`);

  const deleted = await client.DELETE("/tasks/{task_id}", {
    params: { path: { task_id: task.id } },
  });
  equal(deleted.response.status, 204, "delete status");
  const gone = await client.GET("/tasks/{task_id}", { params: { path: { task_id: task.id } } });
  equal(gone.response.status, 404, "deleted task status");
  equal(gone.error?.code, "task_not_found", "deleted task problem code");
}

const baseUrl = process.argv[2];
if (baseUrl === undefined) {
  throw new Error("usage: node dist/scenario.js BASE_URL");
}
await main(baseUrl);
console.log("scenario: ok");
