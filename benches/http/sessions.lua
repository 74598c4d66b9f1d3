-- wrk script of benches/http/run.sh: every request carries a session cookie.
--
--   wrk -c N -t T -d 10s -s sessions.lua http://127.0.0.1:PORT -- METHOD PATH COOKIES T
--
-- COOKIES is a file of N lines, one `Cookie` header value each, established beforehand (one
-- session per connection). wrk has no per-connection hook, so each thread takes its share of
-- the lines and its requests cycle through them in turn: with as many sessions as
-- connections, each session has on average one request in flight. The requests are formatted
-- once, in init, so the script costs the client no Lua work per request beyond picking one.
--
-- At the end it prints one line for run.sh to read:
--   RESULT requests=… duration_us=… p50_us=… p99_us=… errors=…
-- where errors counts connect, read, write and timeout errors and responses that were not
-- 2xx or 3xx.

local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

function init(args)
   local method, path, file, threads = args[1], args[2], args[3], tonumber(args[4])
   -- A POST carries an empty body, so wrk writes `Content-Length: 0`.
   local body = nil
   if method == "POST" then
      body = ""
   end
   reqs = {}
   local line_no = 0
   for cookie in io.lines(file) do
      if cookie ~= "" then
         if line_no % threads == id then
            reqs[#reqs + 1] = wrk.format(method, path, { Cookie = cookie }, body)
         end
         line_no = line_no + 1
      end
   end
   if #reqs == 0 then
      error("no cookie for thread " .. id .. " in " .. file)
   end
   turn = 0
end

function request()
   turn = turn % #reqs + 1
   return reqs[turn]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99),
      e.connect + e.read + e.write + e.status + e.timeout))
end
