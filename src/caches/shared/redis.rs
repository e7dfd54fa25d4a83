//! The shared tier on Redis (7.x, Valkey, managed Redis): a small pool of synchronous
//! connections with connect and command timeouts, and the four scripts of the lease
//! protocol (acquire, renew, release, fenced store). Waiters subscribe to the key's channel.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::{Connection, Script, Value};

pub(crate) use super::connect::Endpoint;
use super::connect::{Con, Node};
use super::{Acquired, Keys, Remote, RemoteResult, SharedInfo, Waiter};
use crate::sys;

/// Hands out the key's next fence token into `fence`: `INCR`, floored at the server's time
/// in µs, so tokens keep growing even if the counter key is evicted or expires.
/// KEYS[3] is the counter, ARGV[3] its TTL (ms).
const NEXT_FENCE: &str = r"
local fence = redis.call('INCR', KEYS[3])
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
if fence < floor then
  fence = floor
  redis.call('SET', KEYS[3], string.format('%.0f', fence))
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
";

/// Takes the lease if free: `SET NX PX` with our random token, then the next fence token.
/// If held, says for how much longer.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  next_fence()
  return {1, fence}
end
return {0, redis.call('PTTL', KEYS[2])}
";

/// Deletes the value and hands out a fence token no lease holds: a loader that started
/// before the delete can no longer store its (possibly stale) value.
const INVALIDATE: &str = r"
next_fence()
return redis.call('DEL', KEYS[1])
";

/// Hands out the next fence token without a lease (a `set` stores under it).
const RESERVE: &str = r"
next_fence()
return fence
";

/// Extends the lease if it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Compare-and-delete: drops the lease only if it is still ours, and wakes the waiters.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
end
return 0
";

/// The fenced store: refuses a write whose fence token is older than the newest one handed
/// out for the key, or than the one the current value was stored under. Then drops our
/// lease (if still ours) and wakes the waiters.
const STORE: &str = r"
local mine = tonumber(ARGV[1])
local issued = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if mine < issued then return 0 end
local stored = tonumber(redis.call('GETRANGE', KEYS[1], 4, 19))
if stored and mine < stored then return 0 end
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[5], 'stored')
return 1
";

/// How long a fence counter outlives its last lease. Its expiry is safe: the floor at the
/// server's clock keeps new tokens above every old one.
const FENCE_TTL_MS: u64 = 24 * 3600 * 1000;

/// The Redis side of one cache.
pub(crate) struct Redis {
    endpoint: Endpoint,
    /// Idle connections, with the fork generation that opened them (a child must not
    /// talk on its parent's sockets).
    pool: Mutex<(u64, Vec<Con>)>,
    acquire: Script,
    renew: Script,
    release: Script,
    store: Script,
    invalidate: Script,
    reserve: Script,
}

impl Redis {
    /// The scripts of the protocol, for the server or cluster at `endpoint`.
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Redis {
            endpoint,
            pool: Mutex::new((sys::fork_generation(), Vec::new())),
            acquire: Script::new(&with_fence(ACQUIRE)),
            invalidate: Script::new(&with_fence(INVALIDATE)),
            reserve: Script::new(&with_fence(RESERVE)),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            store: Script::new(STORE),
        }
    }

    /// Runs `f` on a pooled connection; a failure drops it and every idle one.
    fn with<R>(&self, f: impl FnOnce(&mut Con) -> redis::RedisResult<R>) -> RemoteResult<R> {
        let generation = sys::fork_generation();
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.0 != generation {
                // Inherited from the parent: its sockets are the parent's conversation.
                std::mem::take(&mut pool.1)
                    .into_iter()
                    .for_each(std::mem::forget);
                pool.0 = generation;
            }
            pool.1.pop()
        };
        let mut con = match pooled {
            Some(con) => con,
            None => self.endpoint.connect()?,
        };
        let out = match f(&mut con) {
            Ok(out) => out,
            Err(err) => {
                // The others are most likely dead too (server restarted, network lost): a
                // stale pool would turn one outage into one per pooled connection.
                let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                if pool.0 == generation {
                    pool.1.clear();
                }
                return Err(err.into());
            }
        };
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.0 == generation && pool.1.len() < POOL_MAX {
            pool.1.push(con);
        }
        Ok(out)
    }
}

/// Names per `SCAN` step (and so per pipeline of `clear`'s `UNLINK`s).
const SCAN_BATCH: usize = 1000;

/// Walks the names on `node` matching `pattern` with `SCAN`, a batch at a time.
fn scan(
    con: &mut Con,
    node: &Node,
    pattern: &str,
    mut each: impl FnMut(&mut Con, Vec<Vec<u8>>) -> redis::RedisResult<()>,
) -> redis::RedisResult<()> {
    let mut cursor = 0u64;
    loop {
        let step = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .clone();
        let (next, names): (u64, Vec<Vec<u8>>) =
            redis::from_redis_value(con.query_node(node, &step)?)?;
        if !names.is_empty() {
            each(con, names)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

impl Redis {
    /// Runs a script that takes a fence token without a lease (its ARGV 1 and 2, the
    /// lease's token and duration, are empty).
    fn fence_only(&self, script: &Script, keys: &Keys) -> RemoteResult<i64> {
        self.with(|con| {
            script
                .key(&keys.value)
                .key(&keys.lease)
                .key(&keys.fence)
                .arg("")
                .arg("")
                .arg(FENCE_TTL_MS)
                .invoke(con)
        })
    }
}

/// Idle connections kept per cache and process.
const POOL_MAX: usize = 16;

impl Remote for Redis {
    fn get(&self, keys: &Keys) -> RemoteResult<Option<Vec<u8>>> {
        self.with(|con| redis::cmd("GET").arg(&keys.value).query(con))
    }

    fn acquire(&self, keys: &Keys, token: &str, lease: Duration) -> RemoteResult<Acquired> {
        let (got, n): (i64, i64) = self.with(|con| {
            self.acquire
                .key(&keys.value)
                .key(&keys.lease)
                .key(&keys.fence)
                .arg(token)
                .arg(millis(lease))
                .arg(FENCE_TTL_MS)
                .invoke(con)
        })?;
        Ok(if got == 1 {
            Acquired::Leased(u64::try_from(n).unwrap_or(0))
        } else {
            Acquired::Held(Duration::from_millis(u64::try_from(n).unwrap_or(0)))
        })
    }

    fn renew(&self, keys: &Keys, token: &str, lease: Duration) -> RemoteResult<bool> {
        let renewed: i64 = self.with(|con| {
            self.renew
                .key(&keys.lease)
                .arg(token)
                .arg(millis(lease))
                .invoke(con)
        })?;
        Ok(renewed == 1)
    }

    fn release(&self, keys: &Keys, token: &str) -> RemoteResult<()> {
        self.with(|con| {
            self.release
                .key(&keys.lease)
                .arg(token)
                .arg(&keys.channel)
                .invoke::<Value>(con)
        })?;
        Ok(())
    }

    fn store(
        &self,
        keys: &Keys,
        token: &str,
        fence: u64,
        bytes: &[u8],
        ttl: Option<Duration>,
    ) -> RemoteResult<bool> {
        let stored: i64 = self.with(|con| {
            self.store
                .key(&keys.value)
                .key(&keys.lease)
                .key(&keys.fence)
                .arg(fence)
                .arg(token)
                .arg(bytes)
                .arg(ttl.map_or(0, millis))
                .arg(&keys.channel)
                .invoke(con)
        })?;
        Ok(stored == 1)
    }

    fn info(&self, pattern: &str) -> RemoteResult<SharedInfo> {
        self.with(|con| {
            let mut info = SharedInfo::default();
            for node in con.nodes()? {
                scan(con, &node, pattern, |_, names| {
                    info.entries += names.len() as u64;
                    Ok(())
                })?;
                let text: String = redis::from_redis_value(
                    con.query_node(&node, redis::cmd("INFO").arg("memory"))?,
                )?;
                // A cluster's figures are its masters' added up.
                for line in text.lines() {
                    let number = |v: &str| v.parse::<u64>().unwrap_or(0);
                    match line.trim().split_once(':') {
                        Some(("used_memory", v)) => info.used_memory += number(v),
                        Some(("maxmemory", v)) => info.maxmemory += number(v),
                        Some(("maxmemory_policy", v)) => info.maxmemory_policy = v.to_owned(),
                        _ => {}
                    }
                }
            }
            Ok(info)
        })
    }

    fn invalidate(&self, keys: &Keys) -> RemoteResult<bool> {
        Ok(self.fence_only(&self.invalidate, keys)? == 1)
    }

    fn reserve(&self, keys: &Keys) -> RemoteResult<u64> {
        Ok(u64::try_from(self.fence_only(&self.reserve, keys)?).unwrap_or(0))
    }

    fn clear(&self, pattern: &str) -> RemoteResult<u64> {
        self.with(|con| {
            let mut removed = 0;
            for node in con.nodes()? {
                scan(con, &node, pattern, |con, names| {
                    // One UNLINK per key, pipelined: names of different hash slots may not
                    // share a command in a cluster. (A cluster connection sends the whole
                    // pipeline to the first key's node: the node these names came from.)
                    let mut pipe = redis::pipe();
                    for name in &names {
                        pipe.cmd("UNLINK").arg(name);
                    }
                    let counts: Vec<u64> = pipe.query(con)?;
                    removed += counts.iter().sum::<u64>();
                    Ok(())
                })?;
            }
            Ok(removed)
        })
    }

    fn add_counts(&self, key: &str, deltas: &[(&'static str, u64)]) -> RemoteResult<()> {
        self.with(|con| {
            // One key: one slot, so the pipeline goes to one node in a cluster too.
            let mut pipe = redis::pipe();
            for (field, n) in deltas {
                pipe.cmd("HINCRBY").arg(key).arg(*field).arg(*n).ignore();
            }
            pipe.exec(con)
        })
    }

    fn counts(&self, key: &str) -> RemoteResult<Vec<(String, u64)>> {
        let fields: std::collections::HashMap<String, u64> =
            self.with(|con| redis::cmd("HGETALL").arg(key).query(con))?;
        Ok(fields.into_iter().collect())
    }

    fn subscribe(&self, keys: &Keys) -> RemoteResult<Box<dyn Waiter>> {
        // A connection of its own: a subscribed connection can do nothing else.
        // (In a cluster too: a classic PUBLISH reaches the subscribers of every node.)
        let mut con = self.endpoint.connect_seed()?;
        con.send_packed_command(
            &redis::cmd("SUBSCRIBE")
                .arg(&keys.channel)
                .get_packed_command(),
        )?;
        con.recv_response()?; // the confirmation: from here on no publish is missed
        Ok(Box::new(Subscription(con)))
    }
}

struct Subscription(Connection);

impl Waiter for Subscription {
    fn wait(&mut self, timeout: Duration) -> RemoteResult<bool> {
        self.0
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.0.recv_response() {
            Ok(_) => Ok(true),
            Err(e) if e.is_timeout() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// The script with its `next_fence()` call replaced by the fence code (Redis scripts cannot
/// share functions, short of Redis 7 FUNCTIONs, which managed services may not allow).
fn with_fence(script: &str) -> String {
    script.replace("next_fence()\n", NEXT_FENCE.trim_start())
}

/// Milliseconds for PX/PEXPIRE, at least 1 (0 is an error there).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
