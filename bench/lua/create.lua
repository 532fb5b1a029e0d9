-- POST /tasks as a random user of the data set, with a fresh title each time.
-- args: data file
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local data
local counter = 0
local priorities = { "low", "medium", "high" }

function init(args)
   data = common.init(args)
end

function request()
   counter = counter + 1
   local u = math.random(#data.tokens)
   local body = string.format(
      '{"title": "Bench task %d-%d", "description": "Created by the bench", '
         .. '"priority": "%s", "due_date": "2030-06-%02d", "tags": ["bench", "work"]}',
      thread_index or 0, counter, priorities[counter % 3 + 1], counter % 28 + 1)
   return wrk.format("POST", "/tasks", data.json[u], body)
end
