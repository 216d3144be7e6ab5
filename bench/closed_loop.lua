-- wrk script of bench/closed_loop.py: sends pre-signed deliveries, each once.
--
-- Thread k reads "$CLOSED_LOOP_DELIVERIES-k": whole HTTP/1.1 requests, each preceded by a
-- line holding its length in bytes. request() hands them out in order; a thread that has
-- sent all of its deliveries stops (a repeated delivery would be answered "duplicate"
-- without any work). response() counts answers that are not 2xx or whose JSON "status" is
-- not "processed" and keeps the answered call ids. done() writes one JSON object to
-- "$CLOSED_LOOP_OUT": wrk's summary, latency percentiles in microseconds, and per thread
-- the number of requests sent, whether it ran out, and the answered call ids.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local path = os.getenv("CLOSED_LOOP_DELIVERIES") .. "-" .. id
   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()
   requests = {}
   local at = 1
   while at <= #data do
      local newline = data:find("\n", at, true)
      local length = tonumber(data:sub(at, newline - 1))
      requests[#requests + 1] = data:sub(newline + 1, newline + length)
      at = newline + length + 1
   end
   sent = 0
   ran_out = false
   non_2xx = 0
   not_processed = 0
   answered = {}
end

function request()
   if sent >= #requests then
      -- Nothing left that has not been sent: stop rather than repeat a delivery.
      ran_out = true
      wrk.thread:stop()
      -- wrk still writes what is returned; an empty request is not a delivery.
      return ""
   end
   sent = sent + 1
   return requests[sent]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non_2xx = non_2xx + 1
   end
   if body:match('"status"%s*:%s*"([^"]*)"') ~= "processed" then
      not_processed = not_processed + 1
   end
   answered[#answered + 1] = body:match('"call_id"%s*:%s*"([^"]*)"') or ""
end

local function quoted(text)
   return '"' .. text:gsub('[%c"\\]', "") .. '"'
end

function done(summary, latency, requests)
   local parts = {}
   local function add(name, value)
      parts[#parts + 1] = quoted(name) .. ":" .. value
   end
   add("duration_us", summary.duration)
   add("requests", summary.requests)
   add("bytes", summary.bytes)
   local e = summary.errors
   add(
      "socket_errors",
      string.format(
         '{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status_over_399":%d}',
         e.connect, e.read, e.write, e.timeout, e.status
      )
   )
   local percentiles = {}
   for _, p in ipairs({ 50, 90, 99, 99.9 }) do
      percentiles[#percentiles + 1] = string.format('"%s":%d', p, latency:percentile(p))
   end
   add("latency_us", "{" .. table.concat(percentiles, ",") .. string.format(
      ',"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f}',
      latency.min, latency.max, latency.mean, latency.stdev
   ))
   local per_thread = {}
   for _, thread in ipairs(threads) do
      local ids = {}
      for _, call_id in ipairs(thread:get("answered")) do
         ids[#ids + 1] = quoted(call_id)
      end
      per_thread[#per_thread + 1] = string.format(
         '{"id":%d,"sent":%d,"ran_out":%s,"non_2xx":%d,"not_processed":%d,"answered":[%s]}',
         thread:get("id"), thread:get("sent"), tostring(thread:get("ran_out")),
         thread:get("non_2xx"), thread:get("not_processed"), table.concat(ids, ",")
      )
   end
   add("threads", "[" .. table.concat(per_thread, ",") .. "]")
   local out = assert(io.open(os.getenv("CLOSED_LOOP_OUT"), "w"))
   out:write("{" .. table.concat(parts, ",") .. "}\n")
   out:close()
end
