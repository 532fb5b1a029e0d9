-- POST /tasks/{id}/files: a multipart upload of a 100 KB text file. Each thread walks the
-- data set's tasks in its own stride, so uploads spread evenly and no task reaches the
-- per-task file limit before every task has as many files.
-- args: data file, number of wrk threads
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local FILE_SIZE = 100 * 1024
local BOUNDARY = "benchBoundary7MA4YWxkTrZu0gW"

local data, body, headers
local slots = {}
local position, stride

function init(args)
   data = common.init(args)
   local line = "The bench uploads this line of plain UTF-8 text, over and over.\n"
   local content = string.rep(line, math.ceil(FILE_SIZE / #line)):sub(1, FILE_SIZE)
   body = "--" .. BOUNDARY .. "\r\n"
      .. 'Content-Disposition: form-data; name="file"; filename="bench-upload.txt"\r\n'
      .. "Content-Type: text/plain\r\n\r\n"
      .. content .. "\r\n--" .. BOUNDARY .. "--\r\n"
   headers = {}
   for u, token in ipairs(data.tokens) do
      headers[u] = {
         Authorization = "Bearer " .. token,
         ["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY,
      }
      for _, task_id in ipairs(data.task_ids[u]) do
         slots[#slots + 1] = { u, task_id }
      end
   end
   stride = tonumber(args[2]) or 1
   position = (thread_index or 1) - stride
end

function request()
   position = position + stride
   if position > #slots then
      position = (thread_index or 1)
   end
   local slot = slots[position] or { 1, 1 }
   return wrk.format("POST", "/tasks/" .. slot[2] .. "/files", headers[slot[1]], body)
end
