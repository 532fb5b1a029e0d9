-- GET a path as a random seeded user.
-- args: data file, path template ({task}: one of that user's tasks, {file}: one of its files)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local data, template

function init(args)
   data = common.init(args)
   template = args[2]
end

function request()
   local u = math.random(#data.tokens)
   return wrk.format("GET", common.fill(template, data, u), data.auth[u])
end
