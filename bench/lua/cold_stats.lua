-- Cold stats: a PATCH of one of the user's tasks and GET /tasks/stats for the same user,
-- pipelined on one connection, so the server computes the stats right after a write
-- (a cache MISS). wrk counts both responses as requests and records one latency per pair.
-- args: data file
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local data
local counter = 0

function init(args)
   data = common.init(args)
end

function request()
   counter = counter + 1
   local u = math.random(#data.tokens)
   return common.patch_description(data, u, counter)
      .. wrk.format("GET", "/tasks/stats", data.auth[u])
end
