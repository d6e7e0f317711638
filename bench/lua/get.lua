-- GET one path, with an Authorization header when BENCH_AUTHORIZATION is set.
-- No response() hook: wrk would then buffer every body (100 MiB downloads) to hand it to Lua;
-- non-2xx answers are still counted by wrk itself (errors.status).
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = common.setup
done = common.done

wrk.method = "GET"
wrk.path = os.getenv("BENCH_PATH")
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
if authorization ~= "" then
   wrk.headers["Authorization"] = authorization
end
