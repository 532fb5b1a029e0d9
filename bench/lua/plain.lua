-- An unauthenticated request to a ceiling route.
-- args: data file (unused, for a uniform command line), method, path, optional JSON body
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local req

function init(args)
   local body = args[4]
   if body == "" then
      body = nil
   end
   local headers = body and { ["Content-Type"] = "application/json" } or {}
   req = wrk.format(args[2], args[3], headers, body)
end

function request()
   return req
end
