-- An unauthenticated request to a ceiling route, or two pipelined on one connection.
-- args: data file (unused, for a uniform command line), method, path, optional JSON body,
-- and optionally a second method, path and body sent right after the first
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local req

local function format(method, path, body)
   if body == "" then
      body = nil
   end
   local headers = body and { ["Content-Type"] = "application/json" } or {}
   return wrk.format(method, path, headers, body)
end

function init(args)
   req = format(args[2], args[3], args[4])
   if args[5] then
      req = req .. format(args[5], args[6], args[7] or "")
   end
end

function request()
   return req
end
