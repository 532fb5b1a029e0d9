-- POST /auth/login with the JSON credentials of a random seeded user.
-- args: data file
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local data
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   data = common.init(args)
end

function request()
   local u = math.random(#data.usernames)
   local body = string.format('{"username": "%s", "password": "%s"}', data.usernames[u], data.password)
   return wrk.format("POST", "/auth/login", headers, body)
end
