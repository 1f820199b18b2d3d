-- wrk script of bench/perf.py.
--
--   wrk ... -s wrk.lua URL -- static                    every request as given by -H / URL
--   wrk ... -s wrk.lua URL -- codes FILE THREADS PATH AUTH REDIRECT_URI
--        POST PATH, each request redeeming the next pre-minted code of this thread's
--        slice of FILE (lines "code<TAB>code_verifier"): the token request a relying
--        party sends (client_secret_basic, PKCE verifier, redirect_uri).
--
-- done() prints one line "PERFJSON {...}" that bench/perf/wrk.py reads: counts, errors,
-- latency percentiles in microseconds, and how many requests found no code left
-- ("exhausted": the figure is then invalid and the run is repeated with more codes).

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local mode = "static"
local codes = {}
local next_code = 1
local path, auth, redirect
exhausted = 0

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function init(args)
  mode = args[1] or "static"
  if mode ~= "codes" then return end
  local file, nthreads = args[2], tonumber(args[3])
  path, auth, redirect = args[4], args[5], urlencode(args[6])
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == id then table.insert(codes, line) end
    i = i + 1
  end
end

function request()
  if mode ~= "codes" then return wrk.format() end
  local line = codes[next_code]
  if line == nil then
    -- Out of codes: send the last one again (an error response) and count it.
    exhausted = exhausted + 1
    line = codes[#codes] or "none\tnone"
  else
    next_code = next_code + 1
  end
  local tab = line:find("\t", 1, true)
  local code, verifier = line:sub(1, tab - 1), line:sub(tab + 1)
  local body = "grant_type=authorization_code&code=" .. urlencode(code)
    .. "&redirect_uri=" .. redirect .. "&code_verifier=" .. urlencode(verifier)
  local headers = {
    ["Authorization"] = auth,
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Accept"] = "application/json",
  }
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local gone = 0
  for _, thread in ipairs(threads) do
    gone = gone + (tonumber(thread:get("exhausted")) or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'PERFJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"exhausted":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, gone, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
