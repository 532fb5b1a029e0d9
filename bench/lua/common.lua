-- Shared by every bench scenario (load with require "common").
-- Defines wrk's setup/response/done hooks: per-thread counts by status code and by X-Cache
-- header, merged in done() into one line "BENCH_RESULT {json}" that the harness parses.
-- Scenario scripts define init(args) and request(); args[1] is always the data file, a Lua
-- chunk written by the harness that returns the tokens, users and ids of one data set.

local common = {}

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
   thread:set("thread_index", #threads)
end

-- Globals of each thread's Lua state, read back from done() with thread:get().
statuses = {}
cache = {}

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   local cache_header = headers["x-cache"] or headers["X-Cache"]
   if cache_header then
      cache[cache_header] = (cache[cache_header] or 0) + 1
   end
end

local function merge(into, counts)
   for key, count in pairs(counts or {}) do
      into[key] = (into[key] or 0) + count
   end
end

local function json_counts(counts)
   local parts = {}
   for key, count in pairs(counts) do
      local name = tostring(key):gsub("[^%w_.-]", "?")
      parts[#parts + 1] = string.format('"%s": %d', name, count)
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

-- Percentiles over the recorded histogram. wrk's own latency:percentile() ranks against a
-- count that includes coordinated-omission samples it adds below the minimum for pipelined
-- runs, and then answers 0; ranking against the buckets it can see avoids that.
local function percentiles(latency, wanted)
   local buckets = #latency
   local values, counts, total = {}, {}, 0
   for i = 1, buckets do
      local value, count = latency(i)
      values[i], counts[i] = value, count
      total = total + count
   end
   local result, seen, i = {}, 0, 1
   for _, p in ipairs(wanted) do
      local rank = math.max(1, math.ceil(p / 100 * total))
      while i <= buckets and seen + counts[i] < rank do
         seen = seen + counts[i]
         i = i + 1
      end
      result[p] = values[math.min(i, buckets)] or 0
   end
   return result
end

function done(summary, latency, requests)
   local all_statuses, all_cache = {}, {}
   for _, thread in ipairs(threads) do
      merge(all_statuses, thread:get("statuses"))
      merge(all_cache, thread:get("cache"))
   end
   local e = summary.errors
   local p = percentiles(latency, { 50, 90, 99 })
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, '
         .. '"statuses": %s, "cache": %s}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      p[50], p[90], p[99],
      latency.max, latency.mean,
      json_counts(all_statuses), json_counts(all_cache)))
end

-- Load the data set named by args[1] and prepare per-user header tables.
function common.init(args)
   math.randomseed(os.time() * 1000 + (thread_index or 0))
   local data = dofile(args[1])
   data.auth = {}
   data.json = {}
   for i, token in ipairs(data.tokens or {}) do
      data.auth[i] = { Authorization = "Bearer " .. token }
      data.json[i] = { Authorization = "Bearer " .. token, ["Content-Type"] = "application/json" }
   end
   return data
end

-- A random element of a list; 1 for an empty list (an id that the API answers 404 to).
function common.pick(list)
   if list == nil or #list == 0 then
      return 1
   end
   return list[math.random(#list)]
end

-- Replace {task} / {file} in a path with a random task / file id of user u.
function common.fill(template, data, u)
   local path = template
   if path:find("{task}", 1, true) then
      path = path:gsub("{task}", tostring(common.pick(data.task_ids[u])))
   end
   if path:find("{file}", 1, true) then
      path = path:gsub("{file}", tostring(common.pick(data.file_ids and data.file_ids[u])))
   end
   return path
end

-- A PATCH of the description of one of user u's tasks: the write that the patch and cold-stats
-- scenarios send. Only the description changes, so other scenarios' results stay the same.
function common.patch_description(data, u, counter)
   local body = string.format('{"description": "Edited by the bench, %d-%d"}', thread_index or 0, counter)
   return wrk.format("PATCH", common.fill("/tasks/{task}", data, u), data.json[u], body)
end

return common
