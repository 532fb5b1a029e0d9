-- PATCH the description of a random task of a random user. Only the description changes, so
-- the filters and sort orders the other scenarios measure keep their results.
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
end
