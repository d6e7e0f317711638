-- PUT the bytes of BENCH_BODY_FILE to BENCH_PATH_PREFIX<unique name>, counting every status.
-- Each body is made unique by its first 32 bytes (run, thread, counter): FileWallBall stores
-- identical content once, and real uploads are distinct files.
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = common.setup
done = common.done

local prefix = os.getenv("BENCH_PATH_PREFIX")
local run_id = os.getenv("BENCH_RUN_ID")  -- 8 hex characters
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
local tail, size
local counter = 0
statuses = {}  -- global: done() reads it from every thread with thread:get()

function init(args)
   local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
   local body = file:read("*a")
   file:close()
   size = #body
   tail = body:sub(33)
end

function request()
   counter = counter + 1
   local path = string.format("%s%s-%d-%d.bin", prefix, run_id, id, counter)
   local head = string.format(
      "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
         .. "Content-Length: %d\r\n%s\r\n",
      path, wrk.host, size,
      authorization ~= "" and ("Authorization: " .. authorization .. "\r\n") or "")
   -- One concatenation, one copy of the body per request (wrk.format would make two).
   return head .. string.format("%s%08x%016x", run_id, id, counter) .. tail
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end
