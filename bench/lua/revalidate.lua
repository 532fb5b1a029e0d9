-- GET a path as a random seeded user with If-None-Match: the tag that user last received, as a
-- client polling an unchanged list sends it. Every answer should be a 304.
-- args: data file, path, tags file (a Lua chunk returning one tag per user, in data order)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local data, path
local headers = {}

function init(args)
   data = common.init(args)
   path = args[2]
   local tags = dofile(args[3])
   for u, token in ipairs(data.tokens) do
      headers[u] = { Authorization = "Bearer " .. token, ["If-None-Match"] = tags[u] }
   end
end

function request()
   return wrk.format("GET", path, headers[math.random(#data.tokens)])
end
